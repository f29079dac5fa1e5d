"""auto's leaderboard and report: candidates ranked by selection score, leaderboard.csv and report.txt.

Apart from advise.auto (the run) so that the formatting reads on its own.
"""
from __future__ import annotations

import csv
import io

LEADERBOARD_COLUMNS = ("rank", "candidate", "kind", "selection_score", "noise_se", "seconds", "status", "winner")


def ranked(rows: list[dict], winner: dict | None) -> list[dict]:
    """Rows by selection score (best first; skipped ones last), with rank and the winner marked."""
    order = sorted(rows, key=lambda r: (r["score"] is None, -(r["score"] or 0), r["cost"]))
    return [{**r, "rank": k + 1 if r["score"] is not None else None,
             "winner": winner is not None and r["candidate"] == winner["candidate"]} for k, r in enumerate(order)]


def leaderboard_csv(rows: list[dict], winner: dict | None) -> str:
    """leaderboard.csv: each candidate's out-of-fold score ± its noise, time and status, ranked."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LEADERBOARD_COLUMNS)
    for r in ranked(rows, winner):
        writer.writerow([r["rank"] or "", r["candidate"], r["kind"], _fmt(r["score"]), _fmt(r["se"]),
                         "" if r["seconds"] is None else r["seconds"], r["status"], "yes" if r["winner"] else ""])
    return buf.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def format_result(result: dict) -> str:
    """report.txt: the advice, the leaderboard, the winner and its honest estimate."""
    adv, sel, ev = result["advice"], result["selection"], result["evaluation"]
    lines = [f"auto on {result['images']}: advice scenario {adv['scenario']} ({adv['scenario_name']}); "
             f"see {adv['file']}",
             f"selection: {sel['protocol']} ({sel['n_scored']} of {sel['n_train']} training images scored, the same "
             f"folds for every candidate, seed {sel['seed']}), by balanced accuracy ± its {sel['noise']}; the "
             f"evaluation split ({ev['split_source']}, {ev['n_test']} images) chose nothing",
             "", "| # | candidate | selection bal. acc. | ± noise (SE) | time (s) | status |",
             "|---:|---|---:|---:|---:|---|"]
    for r in result["leaderboard"]:
        mark = " (winner)" if r["winner"] else ""
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['rank'] or ''} | {r['candidate']}{mark} | {_fmt(r['score'])} | {_fmt(r['se'])} | "
                     f"{seconds} | {r['status']} |")
    w = result["winner"]
    if w is not None:
        est = w["estimate"]
        lines += ["", f"winner: {w['candidate']} ({sel['rule']}; {w['score']:.3f} ± {w['se']:.3f})",
                  f"refit on all {est['n_train']} training images, evaluated once on {est['n_test']} held-out images "
                  f"({est['split_source']}): balanced accuracy {est['balanced_accuracy']:.3f}, macro-F1 "
                  f"{est['macro_f1']:.3f}, accuracy {est['accuracy']:.3f}: the honest estimate",
                  f"its run folder: {w['run_dir']} (cnncodes predict {w['run_dir']} IMAGES -o predictions.csv)"]
    lines += [f"budget {result['budget']}: {result['seconds']:.0f} s used"]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)

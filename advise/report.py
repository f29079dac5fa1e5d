"""The advice as a JSON-ready dict and as text for the terminal."""
from __future__ import annotations

from dataclasses import asdict

from . import scenario as sc
from .commands import Recommendation
from .evidence import TOP_LAYER, Similarity, Size
from .scenario import SimilarityParts

IMBALANCE_NOTE_FROM = 3.0  # largest / smallest class count above which the advice mentions class balancing


def build_advice(*, images: str, backbone: str, weights: str | None, size: Size, similarity: Similarity,
                 parts: SimilarityParts, scenario: int, recommendations: list[Recommendation],
                 trials: list[dict] | None, seconds: float) -> dict:
    """The JSON contract: scenario, similarity, size, commands, plus the evidence and thresholds behind them."""
    evidence = asdict(similarity)
    evidence.update(best_early_layer=similarity.best_early_layer if len(similarity.probe) > 1 else None,
                    parts=asdict(parts))
    return {
        "images": images, "backbone": backbone, "weights": weights or "default",
        "scenario": scenario, "scenario_name": sc.SCENARIOS[scenario],
        "similarity": round(parts.similarity, 4), "similar": sc.is_similar(parts.similarity),
        "similarity_interval": list(parts.interval), "interval_level": sc.INTERVAL_LEVEL,
        "large": sc.is_large(size.median_per_class), "size": asdict(size),
        "commands": [r.command for r in recommendations], "recommendations": [r.as_dict() for r in recommendations],
        "evidence": evidence,
        "thresholds": {"large_from_per_class": sc.LARGE_FROM_PER_CLASS, "similar_from": sc.SIMILAR_FROM},
        "notes": notes_for(size, parts.similarity, parts.interval),
        "try": trials, "seconds": round(seconds, 1),
    }


def notes_for(size: Size, similarity: float, interval: tuple[float, float]) -> list[str]:
    """Imbalance, a similarity whose interval holds the threshold (borderline), and a missing train split."""
    notes = []
    if size.imbalance_ratio >= IMBALANCE_NOTE_FROM:
        notes.append(f"classes are imbalanced ({size.imbalance_ratio:.1f}x): run and finetune weight classes by "
                     "default (--class-weight balanced); --sampling over|hybrid is the alternative")
    if interval[0] <= sc.SIMILAR_FROM <= interval[1]:
        notes.append(f"similarity {similarity:.2f} is borderline: its {sc.INTERVAL_LEVEL:.0%} interval "
                     f"{interval[0]:.2f}-{interval[1]:.2f} holds the threshold {sc.SIMILAR_FROM}; compare both "
                     "scenarios with --try")
    if size.split == "all labeled":
        notes.append("no train split (folder or manifest column): the counts cover every labeled image; run and "
                     "finetune hold out a test share of them")
    return notes


def format_advice(advice: dict) -> str:
    """The text `cnncodes advise` prints: figures first, then the scenario and the commands."""
    size, ev, parts = advice["size"], advice["evidence"], advice["evidence"]["parts"]
    large_from, similar_from = advice["thresholds"]["large_from_per_class"], advice["thresholds"]["similar_from"]
    low, high = advice["similarity_interval"]
    probes = ", ".join(f"{layer} {score:.3f}" for layer, score in ev["probe"].items())
    lines = [
        f"size ({size['split']} images): {size['n_images']} images, {size['n_classes']} classes; per class min "
        f"{size['min_per_class']}, median {size['median_per_class']:g}, max {size['max_per_class']}; "
        f"imbalance {size['imbalance_ratio']:.2f}x",
        f"  -> {'large' if advice['large'] else 'small'}: median images per class "
        f"{'>=' if advice['large'] else '<'} {large_from}",
        f"similarity to ImageNet: {advice['similarity']:.3f} ({advice['interval_level']:.0%} interval "
        f"{low:.3f}-{high:.3f} over the {ev['probe_folds']} folds) -> {'similar' if advice['similar'] else 'different'} "
        f"({'>=' if advice['similar'] else '<'} {similar_from}), the mean of:",
        f"  LEEP fraction        {parts['leep_fraction']:.3f}  = 1 + LEEP / H(Y), cross-fitted (P(y | z) from the other "
        f"folds): LEEP {ev['leep']:.3f} nats (in-sample {ev['leep_in_sample']:.3f}), H(Y) {ev['label_entropy']:.3f}, "
        f"NCE {ev['nce']:.3f} (in-sample {ev['nce_in_sample']:.3f})",
    ]
    if ev["best_early_layer"]:
        lines.append(f"  top-layer preference {parts['top_layer_preference']:.3f}  = err(early) / (err(early) + "
                     f"err(top)): {TOP_LAYER} {ev['probe'][TOP_LAYER]:.3f} vs best earlier layer "
                     f"{ev['best_early_layer']} {ev['probe'][ev['best_early_layer']]:.3f}")
    lines += [
        f"  (head confidence     {parts['head_confidence']:.3f}  = 1 - mean normalized entropy of the ImageNet head's "
        f"1000-way softmax ({ev['head_entropy']:.3f}): reported, not in the mean, as it ignores the labels)",
        f"  linear probes ({ev['probe_folds']}-fold CV balanced accuracy, softmax on power-normalized codes, "
        f"{ev['n_sampled']} sampled training images): {probes}",
        f"scenario {advice['scenario']}: {advice['scenario_name']}",
        "recommended:",
    ]
    for rec in advice["recommendations"]:
        lines += [f"  {rec['command']}", f"      {rec['why']}"]
    if advice["try"]:
        lines.append("tried (training data only):")
        width = max(len(row["option"]) for row in advice["try"])
        for row in advice["try"]:
            took = f", {row['seconds']:.0f} s" if row["seconds"] is not None else ""
            lines.append(f"  {row['option']:<{width}}  {row['score']:.3f}  ({row['how']}{took})")
    lines += [f"note: {note}" for note in advice["notes"]]
    lines.append(f"advice took {advice['seconds']:.1f} s")
    return "\n".join(lines)

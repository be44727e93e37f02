"""What an interval or a test says, in words: shared by the evaluation reports and the model card,
so that both call a difference the same thing (and only what its interval supports)."""

from __future__ import annotations

COPY_Z = -3.0  # a memorisation z below this: the samples sit nearer the training images than new real ones do


def difference(metric: str, value: float, low: float, high: float, lower_is_better: bool, subject: str,
               reference: str, plural: bool = False) -> str:
    """One sentence on ``subject``'s ``metric`` minus ``reference``'s, with its 95% interval: a
    difference is named (better, worse) only when the interval excludes zero; ``plural``: the
    subject takes a plural verb ("the samples beat", "gan beats")."""
    shown = f"{subject} minus {reference}: {value:+.3g}, 95% interval [{low:+.3g}, {high:+.3g}]"
    if low <= 0 <= high:
        return f"{shown}; it includes zero, so {metric} does not tell {subject} from {reference} at this sample count."
    better = (high < 0) == lower_is_better
    verb = ("beat" if better else "fall short of") if plural else ("beats" if better else "falls short of")
    return f"{shown}; it excludes zero: {subject} {verb} {reference} on {metric}."


def memorisation(z: float, near: float, ratio: float) -> str:
    """One sentence on the memorisation test (``generative.memorisation``)."""
    facts = (f"memorisation z {z:+.2f} (below {COPY_Z:.0f}: copies), {near:.1%} of samples nearer a training image "
             f"than 95% of held-out images are (5% for new real images), nearest-training-image distance "
             f"{ratio:.2f}x that of held-out images")
    if z < COPY_Z:
        return f"The samples COPY training images: {facts}."
    return f"No sign of copying the training images: {facts}."


def sample_quality(result: dict) -> list[str]:
    """The sentences a generator's evaluation supports: KID's interval, KID against real training
    images (paired), and memorisation; none for keys the result lacks."""
    out = []
    if "kid_low" in result:
        n = f", n = {int(result['num_samples'])}" if "num_samples" in result else ""
        out.append(f"KID {result['kid']:.3g}, 95% interval [{result['kid_low']:.3g}, {result['kid_high']:.3g}] "
                   f"(half-sampling{n}).")
    if "kid_minus_real_low" in result:
        sentence = difference("KID", result["kid_minus_real"], result["kid_minus_real_low"],
                              result["kid_minus_real_high"], True, "the samples", "as many real training images",
                              plural=True)
        out.append(sentence[0].upper() + sentence[1:])
    if "memorisation_z" in result:
        out.append(memorisation(result["memorisation_z"], result["near_copies"], result["nn_distance_ratio"]))
    return out

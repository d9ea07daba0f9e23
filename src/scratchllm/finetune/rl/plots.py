"""``OUT/reward.png``: the mean score and the KL to the reference, step by step."""

from __future__ import annotations

from pathlib import Path

from scratchllm.train.plots import new_figure, save_figure

PLOT_FILE = "reward.png"


def plot_rl(records: list[dict], out_path: Path, *, title: str | None = None) -> Path | None:
    """Two panels sharing the step axis: reward (raw and KL-penalised) above, KL below
    (``kl``, the k3 estimate, and ``kl_k1`` dotted: ``losses.kl_statistics``).

    A reward that climbs while the KL explodes is the policy gaming the reward; the two
    curves side by side show it. Nothing is drawn before the first step.
    """
    rows = [r for r in records if r.get("event") == "train" and r.get("reward_mean") is not None]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig = new_figure(figsize=(6, 5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(steps, [r["reward_mean"] for r in rows], marker="o", markersize=3,
             label="reward (mean score)")
    penalised = [(s, r["penalised_reward"]) for s, r in zip(steps, rows)
                 if r.get("penalised_reward") is not None]
    if penalised:
        top.plot(*zip(*penalised), "-.", label="KL-penalised reward")
    top.set_ylabel("Reward")
    top.legend(loc="best", title=title, title_fontsize=8, fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(steps, [r.get("kl") for r in rows], color="tab:red", marker="o", markersize=3,
                label="kl (k3 estimate)")
    k1 = [(s, r["kl_k1"]) for s, r in zip(steps, rows) if r.get("kl_k1") is not None]
    if k1:  # runs logged before kl_k1 existed have none
        bottom.plot(*zip(*k1), ":", color="tab:purple", label="kl_k1 (k1 estimate)")
        bottom.legend(loc="best", fontsize=8)
    bottom.set_ylabel("KL to reference (nats/answer)")
    bottom.set_xlabel("Step")
    bottom.grid(alpha=0.3)
    return save_figure(fig, out_path, dpi=120)

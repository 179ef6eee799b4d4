"""Plot of a profile's curves (``parastep profile --plot``, docs/design.md §2): adjacent-step
similarity, local deviation of parallel windows, propagation gain and per-image window output error."""

from __future__ import annotations

from ..profiles.model import Profile


def plot_profile(profile: Profile, path: str) -> None:
    """Similarity, deviation and propagation curves of a profile (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = profile.num_steps
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    steps = list(range(1, T))
    ax.plot(steps, profile.similarity.cosine, label="cosine(e_i-1, e_i)")
    ax.set_xlabel("step i")
    ax.set_ylabel("cosine")
    ax2 = ax.twinx()
    ax2.plot(steps, profile.similarity.rel_l1, color="tab:red", label="rel L1")
    ax2.set_ylabel("relative L1", color="tab:red")
    ax.set_title("adjacent-step similarity of guided outputs")
    ax.legend(loc="lower center")

    ax = axes[0][1]
    for pred, style in (("last", "-"), ("linear", "--")):
        rows = profile.deviation[pred].mean
        for j in sorted({1, 3, 7, profile.max_window - 1}):
            if j >= profile.max_window:
                continue
            xs = [s for s in range(T) if len(rows[s]) > j]
            if xs:
                ax.semilogy(xs, [max(rows[s][j], 1e-12) for s in xs], style, label=f"{pred}, offset {j}")
    ax.set_xlabel("window start s")
    ax.set_ylabel("local deviation (latent RMS)")
    ax.set_title("deviation[s][j] of a parallel window")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    ax.semilogy(range(T), profile.propagation.gain)
    ax.set_xlabel("step i")
    ax.set_ylabel("output deviation per unit injected")
    ax.set_title("propagation gain")

    ax = axes[1][1]
    per_image = profile.output_errors is not None
    for kind, pred, style in (("parallel", "last", "-"), ("parallel", "linear", "--"), ("reuse", "last", ":")):
        for w in sorted({2, 4, profile.max_window}):
            if w > profile.max_window:
                continue
            xs, med, p90 = [], [], []
            for s in range(T):
                v = profile.window_errors(kind, start=s, size=w, predictor=pred)
                if v is not None:
                    v = sorted(v)
                    xs.append(s)
                    med.append(max(v[len(v) // 2], 1e-12))
                    p90.append(max(v[min(len(v) - 1, int(0.9 * len(v)))], 1e-12))
            if xs:
                line, = ax.semilogy(xs, med, style, label=f"{kind} {pred}, w={w}")
                if per_image:
                    ax.fill_between(xs, med, p90, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("window start s")
    ax.set_ylabel("output error (latent RMS)")
    ax.set_title("window output error per image (median; band to p90)" if per_image
                 else "window error = sum_j gain * deviation")
    ax.legend(fontsize=7)
    fig.suptitle(f"profile {profile.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

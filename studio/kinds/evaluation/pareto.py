"""The Pareto front of models x recipes: fidelity against latency, as a table row set and a plot."""

from pathlib import Path


def pareto_front(rows: list[dict], cost: str, quality: str) -> list[dict]:
    """The rows no other row beats on both: cheaper or as cheap, and better or as good (strictly on one)."""
    def beaten(row):
        return any(o[cost] <= row[cost] and o[quality] >= row[quality] and
                   (o[cost] < row[cost] or o[quality] > row[quality]) for o in rows)
    return sorted((r for r in rows if not beaten(r)), key=lambda r: r[cost])


def short_name(recipe: str) -> str:
    """A recipe spec for a plot label: "paper:scheduler=DPM++ 2M Karras:steps=12" -> "paper+DPM++ 2M Karras, steps=12"."""
    name, _, overrides = recipe.partition(":")
    if not overrides:
        return name
    return name + "+" + ", ".join(o.split("=", 1)[1] if o.startswith("scheduler=") else o for o in overrides.split(":"))


def plot_pareto(rows: list[dict], cost: str, quality: str, path: Path, title: str, cost_label: str,
                quality_label: str) -> Path:
    """A scatter of every row (labelled model / recipe) with its Pareto front drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    models = sorted({r["model"] for r in rows})
    style = {m: (marker, f"C{i}") for i, (m, marker) in enumerate(zip(models, "osD^v<>p*h"))}
    front = pareto_front(rows, cost, quality)
    for row in rows:
        marker, color = style[row["model"]]
        axes.scatter(row[cost], row[quality], marker=marker, color=color, s=50, label=row["model"])
        if row in front:  # labels only where they matter: the front
            axes.annotate(short_name(row["recipe"]), (row[cost], row[quality]), textcoords="offset points",
                          xytext=(5, 3), fontsize=7)
    axes.plot([r[cost] for r in front], [r[quality] for r in front], "k--", lw=1, label="Pareto front")
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.legend(unique.values(), unique.keys(), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel(cost_label)
    axes.set_ylabel(quality_label)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path

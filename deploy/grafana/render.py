"""Draws the panels of deploy/grafana/moat.json from a real Prometheus: each panel's exact
PromQL, queried over a time range, plotted in the dashboard's grid. For the README
picture without a Grafana server.

    python render.py --prometheus http://127.0.0.1:9090 --minutes 3 --out docs/dashboard.png

Needs matplotlib. render-demo.sh starts moat, secantusdb, Prometheus and some traffic,
then calls this.
"""
import argparse
import json
import os
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}") as r:
        data = json.load(r)
    return data["data"]["result"]


def query_instant(prom, expr, at):
    q = urllib.parse.urlencode({"query": expr, "time": at})
    with urllib.request.urlopen(f"{prom}/api/v1/query?{q}") as r:
        data = json.load(r)
    return data["data"]["result"]


def legend(fmt, metric):
    out = fmt or "{{__name__}}"
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--out", default="dashboard.png")
    ap.add_argument("--dashboard", default=os.path.join(HERE, "moat.json"))
    a = ap.parse_args()
    dash = json.load(open(a.dashboard))
    end = time.time()
    start = end - a.minutes * 60
    step = max(1, int(a.minutes * 60 / 120))
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    top = 0.965  # room for the title
    fig = plt.figure(figsize=(18, rows * 0.44), facecolor="#111217")
    fig.suptitle("moat dashboard: the queries of deploy/grafana/moat.json, from a real Prometheus",
                 color="#d8d9da", fontsize=13, x=0.01, y=0.995, ha="left")
    for p in panels:
        g = p["gridPos"]
        x0, w = g["x"] / 24, g["w"] / 24
        y0, h = top * (1 - (g["y"] + g["h"]) / rows), top * g["h"] / rows
        ax = fig.add_axes([x0 + 0.035, y0 + 0.025, w - 0.045, h - 0.05], facecolor="#181b1f")
        ax.set_title(p["title"], color="#d8d9da", fontsize=10, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for s in ax.spines.values():
            s.set_color("#2c3235")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        series = []
        for t in p["targets"]:
            expr = t["expr"].replace('instance=~"$instance"', 'instance=~".*"')
            if p["type"] in ("stat", "table"):
                # What the panel shows: the value now.
                for r in query_instant(a.prometheus, expr, end):
                    fmt = t.get("legendFormat") or " ".join("{{%s}}" % k for k in r["metric"] if k != "__name__")
                    series.append((legend(fmt, r["metric"]), [0.0], [float(r["value"][1])]))
                continue
            for r in query_range(a.prometheus, expr, start, end, step):
                xs = [float(v[0]) - end for v in r["values"]]
                ys = [float(v[1]) for v in r["values"]]
                if p["title"].startswith("Authentications") and max(ys, default=0) == 0:
                    continue  # keep the legend to what happened
                series.append((legend(t.get("legendFormat"), r["metric"]), xs, ys))
        if p["type"] in ("stat", "table"):
            ax.set_xticks([])
            ax.set_yticks([])
            if not series:
                ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
            for i, (name, xs, ys) in enumerate(series[:4]):
                last = ys[-1] if ys else float("nan")
                if p["title"].startswith("Current SSL mode"):
                    text = name
                elif "Upstream ready" in p["title"]:
                    text = "ready" if last == 1 else "NOT READY"
                elif unit == "d":
                    text = f"{name}: {last:.0f} days"
                elif p["type"] == "table":
                    text = name
                else:
                    text = f"{name}: {last:g}"
                ax.text(0.03, 0.72 - i * 0.28, text, color="#73bf69", fontsize=13 if len(series) == 1 else 10,
                        transform=ax.transAxes, fontweight="bold")
            continue
        for name, xs, ys in series:
            ax.plot(xs, ys, label=name, linewidth=1.4)
        ax.set_xlabel("seconds ago", color="#8e8e8e", fontsize=7)
        if unit:
            ax.set_ylabel(unit, color="#8e8e8e", fontsize=7)
        if series:
            ax.legend(fontsize=7, facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da", loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
        ax.grid(color="#2c3235", linewidth=0.5)
    fig.savefig(a.out, dpi=72, facecolor=fig.get_facecolor())
    print("wrote", a.out)


main()

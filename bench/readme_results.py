"""Regenerate the README's results section from bench/results/*.json.

    .venv/bin/python bench/readme_results.py [--readme README.md] [--stdout]

Rewrites the text between `<!-- RESULTS:BEGIN -->` and `<!-- RESULTS:END -->` in README.md (nothing else; atomic
write). Without the markers the README is left alone and the section goes to stdout. Content: the machine (cores,
torch version, date of each run), one table per benchmark with the command that produced it, and a verdict per
goal of issue 7, computed from the numbers (never typed by hand).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, md_table, teleport_row_order  # noqa: E402

BEGIN, END = "<!-- RESULTS:BEGIN -->", "<!-- RESULTS:END -->"
DEDICATED = {"peers", "teleport", "explained", "run_all", "run_all_quick"}
# commands of result files written by scripts that do not record their own command
DEFAULT_COMMANDS = {
    "samplers": ".venv/bin/python bench/samplers.py", "gaussian": ".venv/bin/python bench/gaussian.py",
    "local": ".venv/bin/python bench/local.py", "metrics": ".venv/bin/python bench/metrics.py speed",
    "train": ".venv/bin/python bench/train.py",
    "fid_train_test_partial": ".venv/bin/python bench/fid_train_test_partial.py",
}


def load_all(folder: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping {path.name}: {err}", file=sys.stderr)
    return out


def machine_line(d: dict) -> str:
    """Cores, torch threads, torch version, date — from whichever of the usual keys a result file recorded."""
    m = d.get("machine")
    m = m if isinstance(m, dict) else ({"processor": m} if isinstance(m, str) else {})
    cores = m.get("cpu_count", m.get("cpus"))
    threads = m.get("torch_threads", m.get("threads", d.get("threads")))
    torch_version = m.get("torch", d.get("torch"))
    parts = [f"{cores} cores" if cores else None, f"{threads} torch thread(s)" if threads else None,
             f"torch {torch_version}" if torch_version else None, m.get("date")]
    parts = [p for p in parts if p]
    return ", ".join(parts) if parts else "machine not recorded"


def command_of(name: str, d: dict) -> str:
    if d.get("command"):
        return d["command"]
    if name.startswith("empirical_"):
        return f".venv/bin/python bench/empirical.py --parts {name.split('_', 1)[1]}"
    if name.startswith("reference_"):
        return f".venv/bin/python bench/reference_check.py models/{name.split('_', 1)[1]}"
    return DEFAULT_COMMANDS.get(name, "(command not recorded)")


def _fmt(v):
    if isinstance(v, float):
        return float(f"{v:.4g}")
    return v


def first_table(d, depth: int = 0):
    """The first list of flat dicts found in a JSON value (breadth-first over keys), or None."""
    if isinstance(d, list) and d and all(isinstance(r, dict) for r in d):
        return d
    if isinstance(d, dict) and depth < 3:
        for v in d.values():
            if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
                return v
        for v in d.values():
            t = first_table(v, depth + 1)
            if t:
                return t
    return None


def generic_section(name: str, d: dict) -> str:
    lines = [f"### {name}", "", f"`{command_of(name, d)}` — {machine_line(d)}", ""]
    table = first_table(d)
    if table:
        cols = [k for k, v in table[0].items() if isinstance(v, (int, float, str, bool)) or v is None][:9]
        lines.append(md_table([{k: _fmt(r.get(k)) for k in cols} for r in table[:24]], cols))
        if len(table) > 24:
            lines.append(f"\n({len(table) - 24} more rows in bench/results/{name}.json)")
    else:
        scalars = {k: _fmt(v) for k, v in d.items() if isinstance(v, (int, float, bool)) and k != "machine"}
        lines.append(md_table([scalars], list(scalars)[:10]) if scalars else f"(see bench/results/{name}.json)")
    return "\n".join(lines)


def peers_section(d: dict) -> tuple[str, str]:
    v = d.get("versions", {})
    lines = ["### Peer libraries: same denoiser, same σ grid", "",
             f"`{d['command']}` — {machine_line(d)}; k-diffusion {v.get('k_diffusion')}, diffusers "
             f"{v.get('diffusers')}; grid {d.get('grid')}", "",
             f"Exact Gaussian (float64, {d['n']} samples): max |scorelab − peer| over all pixels and the RMSE of "
             "each endpoint against the exact PF-ODE solution (images in [−1, 1]); time ratio scorelab / peer "
             "(< 1: scorelab faster). `max_abs_diff_to_sigma_min`: where the peer returns NaN, the same comparison "
             "on the grid without its final step to σ = 0.", ""]
    cols = ["solver", "peer", "steps", "nfe", "max_abs_diff", "max_abs_diff_to_sigma_min", "rmse_scorelab",
            "rmse_peer", "time_ratio", "error"]
    lines.append(md_table([{k: _fmt(r.get(k)) for k in cols} for r in d["gaussian"]], cols))
    if d.get("overhead"):
        cols_o = ["solver", "peer", "max_abs_diff", "rmse_scorelab", "rmse_peer", "us_per_step_scorelab",
                  "us_per_step_peer", "time_ratio", "error"]
        lines += ["", "Solver overhead: a free denoiser (the exact D = x/(1 + σ²) of N(0, I) data), 4 images 28×28, "
                  "float32, 20 steps; µs per step:", "",
                  md_table([{k: _fmt(r.get(k)) for k in cols_o} for r in d["overhead"]], cols_o)]
    if d.get("unet_rows"):
        cols_u = ["solver", "peer", "steps", "nfe", "max_abs_diff", "max_abs_diff_to_sigma_min", "time_ratio", "error"]
        lines += ["", f"U-Net ({d.get('unet')}, float32, {d.get('unet_n')} samples):", "",
                  md_table([{k: _fmt(r.get(k)) for k in cols_u} for r in d["unet_rows"]], cols_u)]
    # verdict: accuracy (agreement with the peer, error vs the exact endpoint) and speed
    def median_ratio(rows):
        r = [x["time_ratio"] for x in rows if "time_ratio" in x]
        return (statistics.median(r), max(r)) if r else (float("nan"), float("nan"))

    agree = [r for r in d["gaussian"] if r.get("max_abs_diff") is not None and r["max_abs_diff"] < 1e-5]
    worst = {}  # solver vs peer → largest difference on the grid without the final step, where the peer gave NaN
    for r in d["gaussian"]:
        if r.get("max_abs_diff") is None or not r["max_abs_diff"] < 1e-5:
            key = f"{r['solver']} vs {r['peer']}"
            worst[key] = max(worst.get(key, 0.0), r.get("max_abs_diff_to_sigma_min") or 0.0) \
                if r.get("max_abs_diff_to_sigma_min") is not None else float("nan")
    differ = [k + (f" (NaN from the peer's step to σ = 0; ≤ {v:.1e} on the grid without it)" if v == v else "")
              for k, v in sorted(worst.items())]
    worse = sorted({f"{r['solver']} vs {r['peer']} ({r['steps']} steps)" for r in d["gaussian"]
                    if r.get("rmse_peer") is not None and r["rmse_scorelab"] > r["rmse_peer"] * 1.01})
    med_o, max_o = median_ratio(d.get("overhead", []))
    med_u, max_u = median_ratio(d.get("unet_rows", []))
    med_g, max_g = median_ratio(d["gaussian"])
    speed = ("goal met" if max_o <= 1.0 else "goal met in the median" if med_o <= 1.0 else "goal missed") \
        if d.get("overhead") else ("goal met" if max_g <= 1.0 else "goal met in the median" if med_g <= 1.0
                                   else "goal missed")
    timing = (f"solver overhead (free denoiser) median {med_o:.2f} (max {max_o:.2f}) — {speed}; end to end, where "
              f"the denoiser dominates and other jobs share the CPU, median {med_g:.2f} (max {max_g:.2f}) on the "
              f"Gaussian" if d.get("overhead") else
              f"end to end median {med_g:.2f} (max {max_g:.2f}) on the Gaussian — {speed}")
    if d.get("unet_rows"):
        timing += f" and {med_u:.2f} (max {max_u:.2f}) on the U-Net"
    verdict = (f"**Peers (goal: as accurate, time ratio ≤ 1.0):** {len(agree)} of {len(d['gaussian'])} Gaussian "
               f"comparisons agree to < 1e-5 (same algorithm); differing: {', '.join(differ) or 'none'}. "
               f"scorelab less accurate than the peer (> 1% RMSE vs the exact endpoint) in: "
               f"{', '.join(worse) or 'no case'}. Time ratio scorelab/peer: {timing}.")
    return "\n".join(lines), verdict


def teleport_section(d: dict) -> tuple[str, str]:
    fid = d.get("features") != "none"
    commands = d.get("commands") or [d["command"]]
    lines = ["### Teleportation on the U-Net", "",
             " then ".join(f"`{c}`" for c in commands) +
             f" — {machine_line(d)}; U-Net: {d.get('unet')}; {d['n']} samples per run, paired seeds; "
             f"metric: {d.get('metric') or 'none (proxy only)'}; total {d.get('total_seconds')} s", ""]
    if not fid:
        lines += ["**No FID in this run.** `proxy_rms` is the RMS pixel distance of each skipped run to the unskipped "
                  "run from the same seeds: how much the samples move, not whether they got worse.", ""]
    cols = ["solver", "steps", "skip", "warm_history", "sigma_skip", "nfe", "nfe_saved", "seconds", "proxy_rms"]
    if fid:
        cols += ["fid", "fid_diff", "fid_diff_low", "fid_diff_high"]
    if any("inception_fid" in r for r in d["rows"]):
        cols += ["inception_fid", "inception_fid_diff", "inception_fid_diff_low", "inception_fid_diff_high"]
    rows = sorted(d["rows"], key=teleport_row_order)
    lines.append(md_table([{k: _fmt(r.get(k)) for k in cols} for r in rows], cols))
    if d.get("plot"):
        lines += ["", f"![{'FID' if fid else 'proxy'} vs NFE]({d['plot']})"]
    if fid:
        met = [v for v in d["verdicts"] if v.get("goal_met")]
        missed = [f"{v['solver']} {v['steps']} (best: {v['nfe_saved']:.0%} of NFE)" for v in d["verdicts"]
                  if not v.get("goal_met")]
        metric = d.get("metric") or "FID"
        proxy_note = ("" if d.get("features") == "inception" else
                      f" The metric is the {metric}, DESIGN.md's cheap stand-in for Inception FID in wide sweeps.")
        verdict = (f"**Teleportation (goal: ≥ 30% of NFE skipped with FID within +2%, every solver):** met for "
                   f"{len(met)} of {len(d['verdicts'])} solver settings" +
                   (f"; missed for {', '.join(missed)}." if missed else ".") +
                   " Judged on point estimates; the paired bootstrap 95% interval of each difference is in the "
                   "table (an interval containing 0 is no measurable difference)." + proxy_note)
    else:
        verdict = ("**Teleportation (goal: ≥ 30% of NFE skipped with FID within +2%, every solver):** not judged — "
                   f"this run ({d['n']} samples) measured NFE, time and the proxy only; the goal needs "
                   "`.venv/bin/python bench/teleport.py` (5,000 samples, Inception FID, bootstrap intervals).")
    return "\n".join(lines), verdict


def explained_section(d: dict) -> tuple[str, str]:
    lines = ["### Explained variance of closed-form models vs the U-Net", "",
             f"`{d['command']}` — {machine_line(d)}; U-Net: {d.get('unet')}; {d['n']} held-out test images; "
             f"models fitted on {d['n_fit']} train images", ""]
    wide = []
    for s in d["sigmas"]:
        row = {"σ": _fmt(s)}
        for r in d["rows"]:
            if r["sigma"] == s:
                row[r["model"]] = f"{r['ev_score']:.4f} / {r['ev_denoiser']:.3f}"
        wide.append(row)
    lines += ["EV_s / EV_D per σ (score-space / denoiser-space, DESIGN.md \"Diagnostics\"):", "",
              md_table(wide, list(wide[0].keys())), "",
              "Crossing σ: the smallest grid σ at and above which EV ≥ the threshold (empty: below it at σ = 80):",
              "",
              md_table([{k: _fmt(v) for k, v in c.items()} for c in d["crossings"]], list(d["crossings"][0].keys()))]
    def down_to(c, key):
        return f"down to σ = {_fmt(c[key])}" if c.get(key) is not None else "not even at σ = 80"

    per_model = "; ".join(f"{c['model']}: EV_s ≥ 0.99 {down_to(c, 'ev_s_099')}, EV_D ≥ 0.9 "
                          f"{down_to(c, 'ev_d_09')}" for c in d["crossings"])
    lines += [""] + [f"![{p.rsplit('_', 1)[-1][:-4].upper()} vs σ]({p})" for p in d.get("plots", [])]
    verdict = ("**Explained variance (no numeric goal; crossing σ per model):** " + per_model +
               (" (quick run: small held-out set, models fitted on a subset)." if d.get("quick") else "."))
    return "\n".join(lines), verdict


def run_all_verdict(d: dict) -> str:
    ok = all(s["returncode"] == 0 for s in d["scripts"])
    mode = "quick" if d.get("quick") else "full"
    limit = (" (goal: quick < 600 s: " + ("met" if d["total_seconds"] < 600 else "missed") + ")"
             if d.get("quick") else "")
    return (f"**`make bench{'-quick' if d.get('quick') else ''}`:** {mode} run of {len(d['scripts'])} scripts took "
            f"{d['total_seconds']:.0f} s{limit}; " + ("all exited 0." if ok else "failures: " + ", ".join(
                f"{s['name']} ({s['returncode']})" for s in d["scripts"] if s["returncode"] != 0) + "."))


def render(results: dict[str, dict]) -> str:
    import torch

    lines = ["## Results", "",
             f"Generated by `.venv/bin/python bench/readme_results.py` from bench/results/*.json. Regenerate "
             f"everything with `make bench` (`make bench-quick` for the small version). This machine: "
             f"{os.cpu_count()} cores, torch {torch.__version__}; each table names the machine and date of its run.",
             ""]
    verdicts, sections = [], []
    for name, fn in (("teleport", teleport_section), ("peers", peers_section), ("explained", explained_section)):
        if name in results:
            try:
                text, verdict = fn(results[name])
            except (KeyError, TypeError, ValueError, IndexError) as err:
                text, verdict = f"### {name}\n\n(bench/results/{name}.json unreadable: {err!r})", None
            sections.append(text)
            if verdict:
                verdicts.append(verdict)
        else:
            verdicts.append(f"**{name}:** no results yet (`.venv/bin/python bench/{name}.py`).")
    for name in ("run_all", "run_all_quick"):
        if name in results:
            verdicts.append(run_all_verdict(results[name]))
    if not {"run_all", "run_all_quick"} & set(results):
        verdicts.append("**`make bench` / `make bench-quick`:** not run end to end yet (no bench/results/run_all*.json); "
                        "the tables below come from the scripts run one by one.")
    others = [generic_section(n, d) for n, d in results.items() if n not in DEDICATED and isinstance(d, dict)]
    lines += ["### Verdicts", ""] + [f"- {v}" for v in verdicts] + [""]
    lines += ["\n\n".join(sections), "", "### Other benchmarks", "", "\n\n".join(others)]
    return "\n".join(lines).rstrip() + "\n"


def replace_section(text: str, section: str) -> str | None:
    """`text` with the part between the markers replaced, or None if the markers are missing or out of order.

    A marker counts only on a line of its own (prose may quote it)."""
    b = re.search(rf"^{re.escape(BEGIN)}[ \t]*$", text, re.M)
    e = re.search(rf"^{re.escape(END)}[ \t]*$", text, re.M)
    if b is None or e is None or e.start() < b.end():
        return None
    return text[:b.end()] + "\n" + section + text[e.start():]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--stdout", action="store_true", help="print the section instead of writing the README")
    args = ap.parse_args(argv)
    section = render(load_all(Path(args.results)))
    readme = Path(args.readme)
    new = None if args.stdout or not readme.exists() else replace_section(readme.read_text(), section)
    if new is None:
        if not args.stdout:
            print(f"{readme}: no {BEGIN} … {END} markers; printing the section instead", file=sys.stderr)
        print(section)
        return 0
    from scorelab._io import atomic_path

    with atomic_path(readme) as tmp:
        Path(tmp).write_text(new)
    print(f"rewrote the results section of {readme} ({len(section.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole method on alanine dipeptide: frames -> tokens -> VAMPNet/SPIB -> MSM -> report.

Usage::

    python examples/alanine_dipeptide.py [--out ala2_report] [--checkpoint NAME|PATH] [--seed N] [--quick]

Reads the alanine-dipeptide dataset shipped with the package (4 x 100 ns, heavy
atoms), embeds every frame with geom2vec's pretrained ViSNet, grid-searches the
VAMPNet (learning rate) at a fixed lag time with trajectory-wise
cross-validation, fits VAMPNet and SPIB, discretises the learned coordinates,
builds a Bayesian MSM and its kinetic model (two metastable sets, their
populations, mean first-passage times with 95 % intervals, transition path
theory, representative structures and what distinguishes each set), and
writes a report (PNG figures, structures, a Markdown summary and a JSON file)
to the output folder. Every number is printed next to that of the usual
hand-made reference, an MSM on (cos, sin) of the backbone dihedrals (phi, psi).

One to two minutes on a 2-core laptop (the embedding is cached in the output
folder, so a second run skips it). ``--seed N`` sets the random state of
everything learned (networks, folds, k-means, the MSMs' sampling; the (phi, psi)
reference stays the same), to see how much the numbers move from seed to seed.
``--quick`` (or ``G2V_EXAMPLE_QUICK=1``) runs a reduced version in under a
minute, as CI does.

The backbone is geom2vec's pretrained ViSNet by name (``--checkpoint visnet``,
the default): the authors' published file (github.com/dinner-group/geom2vec,
MIT licence), downloaded on first use into the per-user cache and checked
against its SHA-256. ``$G2V_MIRROR`` points at a folder or server that holds
the files instead (for machines without internet access), ``$G2V_CACHE``
moves the cache, and ``--checkpoint PATH`` reads a checkpoint file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines with no display

import matplotlib.pyplot as plt
import mdtraj as md
import numpy as np
import torch
import joblib
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

from g2v_sklearn import (
    GeomEmbedder,
    KMeansDiscretizer,
    MSMEstimator,
    SPIBEstimator,
    TokenMerger,
    VAMPNetEstimator,
    kinetic_model,
    plotting,
    reporting,
    save_structures,
    state_importance,
)
from g2v_sklearn.datasets import load_alanine_dipeptide

LAG_PS = 100.0  # far below the few-ns alpha_L exchange, far above the ps-scale librations

# Full and reduced (CI) sizes. The reduced run checks that every step still works;
# its numbers mean little.
SIZES = {
    "full": {"stride": 5, "frames": None, "clusters": 100, "epochs": 15, "spib_epochs": None,
             "grid": {"vamp__lr": [1e-3, 5e-3]}},
    "quick": {"stride": 10, "frames": 400, "clusters": 20, "epochs": 2, "spib_epochs": 2,
              "grid": {"vamp__lr": [1e-3, 5e-3]}},
}
# The four fits of the grid search run two at a time in worker processes, one core each, and
# SPIB then trains in one of those workers beside the refit: a network this small does not keep
# two threads busy (on a 2-core AMD EPYC the refit takes 12 s on both cores and 18 s on one,
# SPIB 20 s on both; side by side, the job takes 60-62 s by its own clock instead of 67 s).
N_JOBS = min(4, os.cpu_count() or 1)
LAGS_PS = (50, 100, 200, 400, 700, 1000)  # implied timescales up to half the slow process's ~2 ns


def dihedral_features(trajs):
    """(phi, psi) in degrees and their (cos, sin) features, per trajectory."""
    angles, feats = [], []
    for t in trajs:
        phi, psi = md.compute_phi(t)[1][:, 0], md.compute_psi(t)[1][:, 0]
        angles.append(np.degrees(np.stack([phi, psi], 1)))
        feats.append(np.stack([np.cos(phi), np.sin(phi), np.cos(psi), np.sin(psi)], 1))
    return angles, feats


def alpha_l_recovery(coordinate, in_alpha_l):
    """Precision and recall against phi > 0 of the smaller of two 1-D k-means clusters of ``coordinate``.

    No label is used to draw the line: the rare cluster is called alpha_L.
    """
    from sklearn.cluster import KMeans

    labels = KMeans(2, n_init=10, random_state=0).fit_predict(np.asarray(coordinate).reshape(-1, 1))
    called = labels == np.argmin(np.bincount(labels, minlength=2))
    hits = np.sum(called & in_alpha_l)
    return float(hits / max(called.sum(), 1)), float(hits / max(in_alpha_l.sum(), 1))


def states_alpha_l_recovery(states, in_alpha_l):
    """Precision and recall against phi > 0 of the states most of whose frames have phi > 0."""
    states = np.asarray(states)
    called = np.array([in_alpha_l[states == k].mean() > 0.5 if np.any(states == k) else False
                       for k in range(states.max() + 1)])[states]
    hits = np.sum(called & in_alpha_l)
    return float(hits / max(called.sum(), 1)), float(hits / max(in_alpha_l.sum(), 1))


def msm_on(features, lag, clusters="auto", seed=0):
    """k-means + Bayesian MSM (its samples give the intervals); returns the fitted pipeline and dtrajs.

    The learned coordinates take the discretiser's default number of centres; the (phi, psi)
    reference keeps its usual 100."""
    pipe = Pipeline([("cluster", KMeansDiscretizer(clusters, random_state=seed)),
                     ("msm", MSMEstimator(lagtime=lag, bayesian=True, n_samples=100, random_state=seed))])
    pipe.fit(features)
    return pipe, pipe["cluster"].transform(features)


def set_table(model, name):
    """The kinetic model's sets as printed lines: population, free energy, MFPTs with intervals."""
    energies, energy_ci = model.free_energies()
    lines = [f"{name}: {model.n_sets} metastable sets"]
    for k in range(model.n_sets):
        text = f"  set {k}: population {model.populations[k]:.3f}"
        if model.populations_interval is not None:
            low, high = model.populations_interval[:, k]
            text += f" [{low:.3f}, {high:.3f}], free energy {energies[k]:.2f} kT [{energy_ci[0, k]:.2f}, {energy_ci[1, k]:.2f}]"
        for j in range(model.n_sets):
            if j != k:
                text += f"; MFPT to set {j} {model.mfpt[k, j]:.3g} {model.unit}"
                if model.mfpt_interval is not None:
                    text += f" [{model.mfpt_interval[0, k, j]:.3g}, {model.mfpt_interval[1, k, j]:.3g}]"
        lines.append(text)
    return lines


def match_sets(model, reference):
    """Precision and recall of every set of ``model`` against the reference's set with most of its frames."""
    ours, ref = np.concatenate(model.assignments), np.concatenate(reference.assignments)
    kept = (ours >= 0) & (ref >= 0)
    ours, ref = ours[kept], ref[kept]
    pairs = {}
    for k in range(model.n_sets):
        target = int(np.bincount(ref[ours == k], minlength=reference.n_sets).argmax()) if np.any(ours == k) else -1
        mine, theirs = ours == k, ref == target
        pairs[k] = {"reference_set": target, "precision": float(np.mean(theirs[mine])) if mine.any() else 0.0,
                    "recall": float(np.mean(mine[theirs])) if theirs.any() else 0.0}
    return pairs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ala2_report"),
                        help="output folder (default: ala2_report, which git ignores)")
    parser.add_argument("--checkpoint", default="visnet",
                        help="a pretrained backbone by name (visnet, et, tensornet) or a checkpoint file")
    parser.add_argument("--seed", type=int, default=0,
                        help="random_state of the learned side: networks, folds, k-means, MSM sampling (default 0; "
                             "the (phi, psi) reference is the same every run)")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("G2V_EXAMPLE_QUICK") == "1",
                        help="reduced size, as in CI")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    args.out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()

    # 1. data: the shipped dataset, heavy atoms only
    data = load_alanine_dipeptide(stride=size["stride"])
    trajs = [t[: size["frames"]] for t in data.trajectories]
    dt = data.timestep_ps
    lag = max(1, round(LAG_PS / dt))
    print(f"data       : {len(trajs)} trajectories x {trajs[0].n_frames} frames, {dt:g} ps apart; "
          f"lag {lag} frames = {lag * dt:g} ps")

    # 2. embedding: pretrained ViSNet -> one token per residue, cached by content
    embedder = GeomEmbedder(args.checkpoint, memory=str(args.out / "token-cache"))
    tokens = embedder.fit_transform(trajs)
    print(f"tokens     : {tokens[0].features.shape[1:]} per frame (residues, scalar+xyz, channels), "
          f"{time.perf_counter() - clock:.0f} s so far")

    # 3. grid search at a fixed lag, whole trajectories held out (KFold over the list).
    # score_k=2 scores every candidate on its two slowest processes, so models with
    # 2 and 3 components compete on equal terms. Everything else is the library's default.
    vamp = VAMPNetEstimator(lagtime=lag, n_components=2, score_k=2, max_epochs=size["epochs"],
                            progress=False, random_state=args.seed)
    # Three residues: no merging, and no graph convolution over a three-node graph
    # (it costs a third of the training time and the transformer mixes them anyway).
    pipe = Pipeline([("merge", TokenMerger(window=1, operator="none")), ("vamp", vamp)])
    n_fits = 2 * int(np.prod([len(v) for v in size["grid"].values()]))
    print(f"grid search: {n_fits} fits ({size['grid']}, 2 folds), one line each:", flush=True)
    search = GridSearchCV(pipe, size["grid"], cv=KFold(2, shuffle=True, random_state=args.seed),
                          error_score="raise", verbose=2, n_jobs=N_JOBS, refit=False).fit(tokens)
    cv_table = reporting.cv_table(search, score_name="vamp2")
    chosen = {k.removeprefix("vamp__"): v for k, v in search.best_params_.items()}
    print(f"grid search: {len(cv_table)} candidates x 2 folds; chosen {chosen} "
          f"(CV VAMP-2 {search.best_score_:.3f}), {time.perf_counter() - clock:.0f} s so far")

    # 3b. SPIB (metastable states that predict the future, with its defaults; the reduced run
    # only caps the epochs) needs nothing from the VAMPNet: it trains in one of the grid search's
    # worker processes, on one core, while this process refits the chosen VAMPNet on all the data
    # and builds its MSMs, kinetic model and figures. (As a generator, Parallel hands the fit over
    # and returns at once; next() collects it.) Two networks this small trained side by side, a
    # core each, finish sooner than one after the other on both cores.
    budget = {} if size["spib_epochs"] is None else {"max_epochs": size["spib_epochs"]}
    spib = Pipeline([("merge", TokenMerger(window=1)),
                     ("spib", SPIBEstimator(lagtime=lag, progress=False, random_state=args.seed, **budget))])
    spib_fit = Parallel(n_jobs=N_JOBS, return_as="generator")([delayed(Pipeline.fit)(spib, tokens)])
    threads = torch.get_num_threads()
    spib_threads = max(1, joblib.cpu_count() // N_JOBS)  # what joblib gives each of its workers
    torch.set_num_threads(max(1, threads - spib_threads))  # SPIB's cores are its own until it is done
    best = clone(pipe).set_params(**search.best_params_).fit(tokens)
    print(f"refit      : {time.perf_counter() - clock:.0f} s so far")

    # 4. learned coordinates -> k-means -> MSM; the same on (phi, psi) as the reference
    z = best.transform(tokens)
    angles, dihedral_feats = dihedral_features(trajs)
    in_alpha_l = np.concatenate(angles)[:, 0] > 0
    precision, recall = alpha_l_recovery(np.concatenate(z)[:, 0], in_alpha_l)
    print(f"alpha_L    : learned coordinate 1, split in two by 1-D k-means, finds the frames with phi > 0 at "
          f"precision {precision:.3f} and recall {recall:.3f}")
    # the learned coordinates take the discretiser's default number of centres
    msm_pipe, dtrajs = msm_on(z, lag, seed=args.seed)
    ref_pipe, ref_dtrajs = msm_on(dihedral_feats, lag, size["clusters"])  # the reference: seed 0 every run
    msm, ref_msm = msm_pipe["msm"], ref_pipe["msm"]
    # with 95 % credible intervals from the Bayesian MSMs: alpha_L is visited rarely, so they are wide
    ours, ref = (reporting.slowest_timescales(m, 2, timestep=dt / 1000) for m in (msm, ref_msm))
    ours_ns, ref_ns = ours["timescales"], ref["timescales"]

    # 4b. the kinetic model: two metastable sets of each MSM (PCCA+), their populations, MFPTs and
    # pathways with intervals, the residues that distinguish them, and their structures
    kinetics = kinetic_model(msm_pipe, z, n_sets=2, timestep=f"{dt} ps", unit="ns")
    ref_kinetics = kinetic_model(ref_pipe, dihedral_feats, n_sets=2, timestep=f"{dt} ps", unit="ns")
    rare = int(np.argmin(kinetics.populations))
    paths = kinetics.tpt(1 - rare, rare)  # into the rare set (alpha_L)
    matched = match_sets(kinetics, ref_kinetics)
    importance = state_importance(kinetics, best, tokens, random_state=args.seed)
    structures = save_structures(kinetics, args.out / "structures", trajs, tokens=tokens, importance=importance,
                                 random_state=args.seed)
    print("\n".join(set_table(kinetics, "learned MSM") + set_table(ref_kinetics, "(phi, psi) MSM")))
    print("sets       : " + "; ".join(f"learned set {k} = (phi, psi) set {m['reference_set']} at precision "
                                      f"{m['precision']:.3f}, recall {m['recall']:.3f}" for k, m in matched.items()))
    rate_ci = "" if paths.rate_interval is None else f" [{paths.rate_interval[0]:.3g}, {paths.rate_interval[1]:.3g}]"
    print(f"TPT        : set {1 - rare} -> set {rare} at {paths.rate:.3g}{rate_ci} per ns; structures in "
          f"{args.out / 'structures'}, {time.perf_counter() - clock:.0f} s so far")

    # 5. the report's figures (SPIB is still training meanwhile)
    lagtimes = sorted({max(1, round(ps / dt)) for ps in LAGS_PS if ps / dt <= trajs[0].n_frames / 4})
    figures = {}
    # separate y axes: each panel shows its own slowest process
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    plotting.plot_implied_timescales(msm.implied_timescales(dtrajs, lagtimes, n_its=3), ax=axes[0],
                                     timestep=dt / 1000, unit="ns")
    axes[0].set_title("MSM on learned coordinates")
    plotting.plot_implied_timescales(ref_msm.implied_timescales(ref_dtrajs, lagtimes, n_its=3), ax=axes[1],
                                     timestep=dt / 1000, unit="ns")
    axes[1].set_title("MSM on (phi, psi)")
    figures["implied_timescales.png"] = fig

    ck_axes = plotting.plot_ck_test(msm.ck_test(dtrajs, n_sets=2), timestep=dt / 1000, unit="ns")
    figures["ck_test.png"] = np.asarray(ck_axes).ravel()[0].figure

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    zz = np.concatenate(z)
    # the learned coordinates have long sparse tails: histogram the central 99.8 % of each
    view = reporting.central_range(zz[:, :2])
    plotting.plot_free_energy(zz[:, 0], zz[:, 1], ax=axes[0], range=view)
    axes[0].set(xlabel="learned coordinate 1", ylabel="learned coordinate 2", title="VAMPNet coordinates")
    aa = np.concatenate(angles)
    plotting.plot_free_energy(aa[:, 0], aa[:, 1], ax=axes[1])
    axes[1].set(xlabel="phi (degrees)", ylabel="psi (degrees)", title="Ramachandran plane")
    # what coordinate 1 is: a slow coordinate of a rare two-state process is nearly an indicator
    # of the rare state, so its free-energy surface is two narrow wells; on the Ramachandran
    # plane its values show which region it singles out
    low, high = view[0]
    points = axes[2].scatter(aa[:, 0], aa[:, 1], c=np.clip(zz[:, 0], low, high), s=2, cmap="coolwarm",
                             rasterized=True)
    fig.colorbar(points, ax=axes[2], label="learned coordinate 1")
    axes[2].set(xlabel="phi (degrees)", ylabel="psi (degrees)", xlim=(-180, 180), ylim=(-180, 180),
                title="(phi, psi) coloured by learned coordinate 1")
    figures["free_energy.png"] = fig

    figures["training.png"] = plotting.plot_history(best["vamp"]).figure

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
    plotting.plot_state_network(kinetics, tpt=paths, ax=axes[0])
    plotting.plot_states_on_coordinates(kinetics, ax=axes[1], range=view)
    axes[1].set(xlabel="learned coordinate 1", ylabel="learned coordinate 2", title="sets on the learned coordinates")
    # the learned coordinate is nearly an indicator of alpha_L (two narrow wells): the Ramachandran
    # plane shows what the sets are
    plotting.plot_states_on_coordinates(kinetics, coordinates=angles, ax=axes[2], range=[[-180, 180], [-180, 180]])
    axes[2].set(xlabel="phi (degrees)", ylabel="psi (degrees)", title="the same sets on (phi, psi)")
    plotting.plot_committor(paths, z, ax=axes[3])
    axes[3].set_xlabel("learned coordinate 1")
    figures["kinetics.png"] = fig
    ax = plotting.plot_state_importance(importance, residue_ids=tokens[0].residue_ids)
    ax.set_title("what distinguishes each set (token substitution)")
    figures["state_importance.png"] = ax.figure

    reporting.save_figures(figures, args.out)

    # 6. SPIB's states (fitted in 3b, beside all of the above), on the same tokens
    spib = next(spib_fit)
    torch.set_num_threads(threads)
    states = np.concatenate(spib.predict(tokens))
    populations = np.bincount(states) / states.size
    spib_precision, spib_recall = states_alpha_l_recovery(states, in_alpha_l)
    spib_kinetics = None
    if spib["spib"].n_states_ >= 2:  # SPIB's states are the sets: the same kinetic model, from its labels
        spib_kinetics = kinetic_model(spib, tokens, timestep=f"{dt} ps", unit="ns", random_state=args.seed)
        print("\n".join(set_table(spib_kinetics, "SPIB's states")))
    entries = int(sum(np.sum(np.diff((a[:, 0] > 0).astype(int)) == 1) for a in angles))
    total_ns = sum(len(a) for a in angles) * dt / 1000
    print(f"SPIB       : {spib['spib'].n_states_} states, populations "
          + ", ".join(f"{p:.1%}" for p in populations) + f"; its alpha_L state(s) find the frames with phi > 0 "
          f"at precision {spib_precision:.3f} and recall {spib_recall:.3f}, {time.perf_counter() - clock:.0f} s so far")

    summary = {
        "data": {"trajectories": len(trajs), "frames_each": trajs[0].n_frames, "timestep_ps": dt,
                 "lag_frames": lag, "lag_ps": lag * dt, "settings": data.settings},
        "grid_search": {"candidates": cv_table, "chosen": chosen, "best_cv_vamp2": float(search.best_score_)},
        "slowest_timescales_ns": {"learned": ours_ns, "phi_psi_msm": ref_ns,
                                  "learned_95ci": ours["ci"], "phi_psi_msm_95ci": ref["ci"]},
        "alpha_L_from_coordinate_1": {"precision": precision, "recall": recall},
        "spib": {"n_states": int(spib["spib"].n_states_), "populations": populations.tolist(),
                 "alpha_L_fraction": float(in_alpha_l.mean()), "alpha_L_entries": entries,
                 "alpha_L_precision": spib_precision, "alpha_L_recall": spib_recall},
        "kinetics": {
            "learned": kinetics.table(), "phi_psi_msm": ref_kinetics.table(), "set_match": matched,
            "learned_clusters": int(msm_pipe["cluster"].n_clusters_),
            "second_timescale_ns": {"learned": ours_ns[1], "phi_psi_msm": ref_ns[1]},
            "tpt": {"source": list(paths.source), "sink": list(paths.sink), "rate_per_ns": paths.rate,
                    "rate_per_ns_95ci": None if paths.rate_interval is None else list(paths.rate_interval),
                    "pathways": [[list(p), f] for p, f in paths.pathways]},
            "importance": importance.tolist(),
            "structures": {str(k): {n: str(v) for n, v in e.items() if n != "frames"} for k, e in structures.items()},
            "spib": None if spib_kinetics is None else spib_kinetics.table(),
        },
        "seconds": time.perf_counter() - clock,
        "quick": bool(args.quick),
        "seed": args.seed,
    }
    def timescale_rows(sep):
        for i in range(2):
            yield sep.join(f"{t[i]:.3f}".ljust(14) for t in (ours_ns, ref_ns))

    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    lines = ["| " + " | ".join(cv_table[0]) + " |", "|" + "---|" * len(cv_table[0])]
    lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |"
              for row in cv_table]
    (args.out / "report.md").write_text(
        "# Alanine dipeptide\n\n## Grid search (CV VAMP-2 on the two slowest processes)\n\n"
        + "\n".join(lines)
        + f"\n\nChosen: {chosen}\n\n## alpha_L on learned coordinate 1\n\nSplit in two by 1-D k-means "
        f"(the smaller cluster called alpha_L, no label used): precision {precision:.3f}, recall {recall:.3f} "
        f"against phi > 0.\n\n## Slowest implied timescales at lag {lag * dt:g} ps (ns)\n\n"
        "Maximum-likelihood MSMs; 95 % credible intervals from the Bayesian posteriors are in summary.json.\n\n"
        "| process | learned | (phi, psi) MSM |\n|---|---|---|\n"
        + "".join(f"| {i + 1} | {row} |\n" for i, row in enumerate(timescale_rows(" | ")))
        + "\n## Metastable sets (PCCA+ of each MSM; MFPTs in ns with 95 % credible intervals)\n\n```\n"
        + "\n".join(set_table(kinetics, "learned MSM") + set_table(ref_kinetics, "(phi, psi) MSM"))
        + "\n```\n\nStructures of each set (typical frame, frames drawn by membership, importance in the "
        "B-factors) are in structures/.\n"
        + "\n![implied timescales](implied_timescales.png)\n![CK test](ck_test.png)\n"
        "![free energy](free_energy.png)\n![kinetics](kinetics.png)\n![importance](state_importance.png)\n"
        "![training](training.png)\n"
    )

    print(f"\nslowest implied timescales at lag {lag * dt:g} ps (ns), with 95 % credible intervals:")
    print(f"  process   {'learned':<30}   (phi, psi) MSM")
    for i in range(2):
        cells = [f"{t['timescales'][i]:.3f}" + ("" if t["ci"] is None else f" [{t['ci'][0][i]:.3f}, {t['ci'][1][i]:.3f}]")
                 for t in (ours, ref)]
        print(f"  {i + 1:>7}   {cells[0]:<30}   {cells[1]}")
    print(f"  alpha_L (phi > 0) holds {in_alpha_l.mean():.1%} of the frames and is entered {entries} times "
          f"in {total_ns:g} ns, so the slowest timescale rests on few events (95% credible intervals "
          "of both MSMs are in summary.json).")
    if args.quick:
        print("(reduced run: too little data for these numbers to mean anything)")
    print(f"report     : {args.out}/ ({', '.join(sorted(figures))}, report.md, summary.json) "
          f"in {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()

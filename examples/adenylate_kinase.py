"""Token merging on a 214-residue protein: adenylate kinase, window search, attention by domain.

Usage::

    python examples/adenylate_kinase.py [--out adk_report] [--checkpoint NAME|PATH] [--quick]

Embeds the two closed -> open transition paths of adenylate kinase that
MDAnalysisTests ships (98 + 102 frames, 1,656 heavy atoms in 214 residues)
with geom2vec's pretrained ViSNet (or, with ``--checkpoint et`` or
``--checkpoint tensornet``, its equivariant transformer or TensorNet; a
checkpoint file's architecture is read from the file),
grid-searches the token-merging window
``w`` (residues per fragment token) with the two paths as the two
cross-validation folds, and writes the per-residue attention importance of the
chosen model as a plot coloured by domain (CORE, NMP, LID) and as a PDB of the
closed state with the importance in the B-factor column. It then builds the
kinetic model of the chosen model's coordinate (k-means, an MSM on the paths
read both ways, two metastable sets): a table of the sets, their network, their typical
structures (the closed and open ends) and the residues that distinguish them.

These frames are transition paths made by a biased method, not equilibrium
dynamics: the slow coordinate found is the opening itself, and any timescale
is illustrative only. ``--quick`` (or ``G2V_EXAMPLE_QUICK=1``) uses 8 frames
per path, as CI does. Backbones by name are fetched and verified as in
alanine_dipeptide.py (``$G2V_MIRROR``, ``$G2V_CACHE``).
Tokens are cached in ``--memory`` (default: a ``token-cache`` folder in the
output folder), so a second run skips the embedding.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mdtraj as md
import numpy as np
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from g2v_sklearn import (
    GeomEmbedder,
    KMeansDiscretizer,
    MSMEstimator,
    TokenMerger,
    VAMPNetEstimator,
    kinetic_model,
    plotting,
    save_structures,
    state_importance,
)
from g2v_sklearn.datasets import load_adenylate_kinase

QUICK_FRAMES = 8  # frames per path with --quick


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("adk_report"), help="output folder")
    parser.add_argument("--checkpoint", default="visnet",
                        help="a pretrained backbone by name (visnet, et, tensornet) or a checkpoint file")
    parser.add_argument("--memory", type=Path, default=None,
                        help="token cache folder (default: OUT/token-cache)")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("G2V_EXAMPLE_QUICK") == "1",
                        help="reduced size, as in CI")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    print("NOTE: these frames are two closed -> open transition paths (DIMS), not equilibrium "
          "dynamics; the kinetics below are illustrative only.")

    adk = load_adenylate_kinase(n_frames=QUICK_FRAMES if args.quick else None)
    print(f"data       : {[p.n_frames for p in adk.paths]} frames, {adk.paths[0].n_residues} residues")

    embedder = GeomEmbedder(args.checkpoint, memory=str(args.memory or args.out / "token-cache"))
    tokens = embedder.fit_transform(adk.paths)
    print(f"tokens     : {embedder.n_residues_} residue tokens per frame from "
          f"{embedder.atom_indices_.size} heavy atoms, {time.perf_counter() - clock:.0f} s so far")

    # The window w sets how many residues one fragment token summarises: 214 tokens at
    # w=1, 27 at w=8. Each path is one fold: trained on one, scored on the other.
    windows = [1, 4, 8] if args.quick else [1, 2, 4, 8, 16]
    pipe = Pipeline([
        ("merge", TokenMerger(window=1)),
        ("vamp", VAMPNetEstimator(lagtime=1, n_components=1, d_model=32, n_heads=2, n_layers=1,
                                  batch_size=16, lr=1e-3, max_epochs=2 if args.quick else 10,
                                  validation_fraction=0, progress=False, random_state=0)),
    ])
    search = GridSearchCV(pipe, {"merge__window": windows}, cv=2, error_score="raise").fit(tokens)
    scores = dict(zip(windows, search.cv_results_["mean_test_score"].tolist()))
    best_window = search.best_params_["merge__window"]
    print("window     : " + ", ".join(f"w={w}: {s:.3f}" for w, s in scores.items())
          + f"  (CV VAMP-2) -> w={best_window}")

    best = search.best_estimator_
    importance = best["vamp"].attention_importance(best["merge"].transform(tokens))
    residue_ids = np.array([r.resSeq for r in adk.paths[0].topology.residues])

    ax = plotting.plot_residue_importance(importance, residue_ids=residue_ids, domains=adk.domains)
    ax.set_title(f"Attention importance, window {best_window} (transition paths: illustrative)")
    ax.figure.tight_layout()
    ax.figure.savefig(args.out / "importance.png", dpi=120)
    plt.close(ax.figure)

    # B-factors: every atom carries its residue's importance, scaled to [0, 99] (PDB allows < 100)
    closed = adk.closed
    per_atom = importance[[atom.residue.index for atom in closed.topology.atoms]]
    scaled = 99 * (per_atom - importance.min()) / max(np.ptp(importance), 1e-12)
    closed.save_pdb(str(args.out / "importance.pdb"), bfactors=scaled)

    # The kinetic model of the chosen coordinate: two sets along the opening. Transition paths go one
    # way only (closed -> open), so no state would connect both ways; each path is also read backwards,
    # as a reversible model of the opening assumes. Its times mean nothing physical; the sets, their
    # structures and what distinguishes them do.
    both_ways = tokens + [t[::-1] for t in tokens]
    coordinates = best.transform(both_ways)
    msm_pipe = Pipeline([("cluster", KMeansDiscretizer(random_state=0)),
                         ("msm", MSMEstimator(lagtime=1))]).fit(coordinates)
    kinetics = kinetic_model(msm_pipe, coordinates, n_sets=2)
    per_set = state_importance(kinetics, best, both_ways, n_frames=4 if args.quick else 20, random_state=0)
    sources = adk.paths + [p[::-1] for p in adk.paths]
    structures = save_structures(kinetics, args.out / "structures", sources, tokens=both_ways, importance=per_set,
                                 n_samples=4, random_state=0)
    ca = closed.topology.select("name CA")
    ends = {"closed": adk.paths[0][0], "open": adk.paths[0][-1]}
    rows = kinetics.table()
    for k, row in enumerate(rows):
        typical = sources[structures[k]["frames"][0, 0]][structures[k]["frames"][0, 1]]
        row.update({f"ca_rmsd_to_{name}_nm": float(md.rmsd(typical, end, atom_indices=ca)[0])
                    for name, end in ends.items()})
        top = residue_ids[np.argsort(per_set[k])[::-1][:5]].tolist()
        print(f"set {k}    : population {row['population']:.2f}, MFPT to the other set "
              f"{kinetics.mfpt[k, 1 - k]:.3g} frames; typical frame C-alpha RMSD to closed "
              f"{row['ca_rmsd_to_closed_nm']:.2f} nm, to open {row['ca_rmsd_to_open_nm']:.2f} nm; "
              f"most distinctive residues {top}")
    fig, axes = plt.subplots(1, 2, figsize=(14, 4), gridspec_kw={"width_ratios": [1, 2]})
    plotting.plot_state_network(kinetics, ax=axes[0])
    plotting.plot_state_importance(per_set, residue_ids=residue_ids, domains=adk.domains, ax=axes[1])
    axes[1].set_title("what distinguishes each set (token substitution)")
    fig.tight_layout()
    fig.savefig(args.out / "kinetics.png", dpi=120)
    plt.close(fig)

    by_domain = {name: float(importance[adk.residue_domain == name].mean()) for name in adk.domains}
    print("importance : mean per domain " + ", ".join(f"{k} {v:.4f}" for k, v in by_domain.items()))
    summary = {"windows": scores, "chosen_window": best_window, "importance_by_domain": by_domain,
               "top_residues": residue_ids[np.argsort(importance)[::-1][:10]].tolist(),
               "sets": rows, "set_importance": per_set.tolist(),
               "structures": {str(k): {n: str(v) for n, v in e.items() if n != "frames"} for k, e in structures.items()},
               "seconds": time.perf_counter() - clock, "quick": bool(args.quick),
               "note": "transition paths, not equilibrium dynamics: kinetics are illustrative"}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"report     : {args.out}/ (importance.png, importance.pdb, kinetics.png, structures/, summary.json) "
          f"in {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()

"""`gen-align analyze`: geometry diagnostics of saved embeddings."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from gen_align.errors import ConfigError
    from gen_align.eval.analysis import analyze_embeddings, analyze_embeddings_file, embed_manifest, write_report

    if args.embeddings and (args.manifest or args.space):
        raise ConfigError("pass either --embeddings, or --space/--preset with --manifest, not both.")
    if args.embeddings:
        report = analyze_embeddings_file(
            args.embeddings,
            out_dir=args.out,
            anchor=args.anchor,
            tau=args.tau,
            max_items=args.max_items,
            seed=args.seed,
        )
    elif args.manifest:
        modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
        source = args.space or args.preset
        z = embed_manifest(
            source, args.manifest, modalities, max_items=args.max_items, seed=args.seed, weights_dir=args.weights_dir
        )
        report = analyze_embeddings(z, anchor=args.anchor, tau=args.tau, max_items=args.max_items, seed=args.seed)
        report.values["source"] = {"space": str(source), "manifest": str(args.manifest)}
        report = write_report(report, z, args.out, seed=args.seed)
    else:
        raise ConfigError("give --embeddings FILE.safetensors, or --manifest M with --space CKPT (or --preset P).")
    print(report.markdown)
    figures = " ".join(report.values.get("figures", {}).values())
    print(f"\nwrote {report.json_path} {report.markdown_path} {figures}".rstrip())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="modality gap, Hölder divergence, conflict metrics ζ/χ and degeneration of saved embeddings",
        description="Analyse saved {modality: (N, d)} embeddings (--embeddings) or a space on a manifest "
        "(--space/--preset + --manifest); writes analysis.json, analysis.md, a t-SNE map (UMAP too when umap-learn "
        "is installed) and paired/unpaired similarity histograms.",
    )
    p.add_argument("--embeddings", help="safetensors file with one (N, d) tensor per modality (rows paired)")
    p.add_argument("--space", help="a trained space checkpoint to embed --manifest with")
    p.add_argument("--preset", help="a preset to embed --manifest with")
    p.add_argument("--manifest", help="JSONL manifest of items to embed")
    p.add_argument("--modalities", default="image,text,audio", help="modalities to embed (default image,text,audio)")
    p.add_argument("--weights-dir", help="local weights directory (default: $GEN_ALIGN_HOME)")
    p.add_argument("--anchor", default="image", help="anchor modality for ζ/χ (default: image)")
    p.add_argument(
        "--tau",
        type=float,
        default=0.07,
        help="the paper's τ: kernel exp(-||x-y||^2/(2 tau^2)) of uniformity and Hölder, InfoNCE temperature of ζ/χ "
        "(default: 0.07)",
    )
    p.add_argument("--max-items", type=int, default=4096, help="random subset for the O(N²) estimates (default 4096)")
    p.add_argument("--seed", type=int, default=0, help="seed of that subset (default 0)")
    p.add_argument("--out", default="results/analysis", help="output directory (default: results/analysis)")
    p.set_defaults(func=run)

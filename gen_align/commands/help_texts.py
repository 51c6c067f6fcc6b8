"""The Examples section of every command's ``--help`` and the descriptions a bare ``add_parser`` lacks.

One table, keyed by the command path (``"mini train"``), so that a test can check that every command has examples
and that each example parses; :func:`attach` puts them into a built parser.
"""

from __future__ import annotations

import argparse

WAV = "gen_align/mini/weights/examples/large-blue-circle-plain.wav"

EXAMPLES: dict[str, tuple[str, ...]] = {
    "analyze": (
        "gen-align analyze --embeddings emb.safetensors --out results/analyze",
        "gen-align analyze --preset mini --manifest world/test/manifest.jsonl --max-items 512 --out results/gap",
    ),
    "app": ("gen-align app", "gen-align app --preset stable-unclip-h --port 7861"),
    "calibrate": ("gen-align calibrate --preset mini --images world/test/images",),
    "data": ("gen-align data vggsound --csv vggsound.csv --clips clips/ --out data/vggsound",),
    "data vggsound": (
        "gen-align data vggsound --csv vggsound.csv --clips clips/ --out data/vggsound --label-captions",
        "gen-align data vggsound --csv test.csv --clips clips/ --out data/vggsound-test "
        "--caption-model Salesforce/blip-image-captioning-large",
    ),
    "data caption": (
        "gen-align data caption data/vggsound/test.jsonl --out data/vggsound/captions.jsonl",
        "gen-align data caption data/vggsound/train.jsonl --model Salesforce/blip2-opt-2.7b --batch-size 64 "
        "--out data/vggsound/captions.jsonl",
    ),
    "data test-ids": ("gen-align data test-ids --csv test.csv --out vggsound_test_1024.txt",),
    "download": (
        "gen-align download stable-unclip-h",
        "gen-align download kandinsky-2.2 --modalities text --weights-dir /data/weights",
        "gen-align download stable-unclip-h --check",
        "gen-align download imagebind-h --modalities audio",
    ),
    "embed": (
        "gen-align embed world/test/manifest.jsonl --modalities image,text,audio --out results/emb/test.safetensors",
        "gen-align embed data/vggsound/test.jsonl --space runs/unialign/space --modalities text,audio "
        "--out emb/vgg.safetensors",
    ),
    "encode": (
        "gen-align encode world/train/manifest.jsonl --out cache/train",
        "gen-align encode data/vggsound/train.jsonl --preset stable-unclip-h --modalities audio --out cache/vgg",
        "gen-align encode data/clips.jsonl --modalities audio --max-audio-seconds 30 --strict --out cache/clips",
    ),
    "fid": (
        "gen-align fid --manifest world/test/manifest.jsonl --extractor "
        "gen_align.mini.recipes.classifier:shipped_extractor --out results/fid",
        "gen-align fid --manifest data/vggsound/test.jsonl --preset imagebind-h --conditions text,audio --kid "
        "--out results/fid-vgg",
    ),
    "generate": (
        f'gen-align generate --text "a small red star on stripes" --audio {WAV} --out results/generate',
        'gen-align generate --text "a huge cobalt disc" --n 8 --seed 3 --steps 25 --out results/discs',
        "gen-align generate --preset imagebind-h --audio bark.wav --weights-dir ~/models --out results/bark",
    ),
    "interpolate": (f'gen-align interpolate --start text="a small red star on stripes" --end audio={WAV} --frames 8',),
    "mini": ("gen-align mini build world", "gen-align mini train --ship", "gen-align mini check"),
    "mini build": ("gen-align mini build world", "gen-align mini build small-world --train 2000 --test 256 --seed 1"),
    "mini train": (
        "gen-align mini train --ship",
        "gen-align mini train --work results/mini --stages heads,ablations --threads 2",
        "gen-align mini train --smoke --work /tmp/mini-smoke",
    ),
    "mini eval": (
        "gen-align mini eval --items 256 --ablations",
        "gen-align mini eval --work results/mini --items 64 --seeds 0 --out /tmp/mini-eval",
    ),
    "mini check": ("gen-align mini check", "gen-align mini check --items 64 --steps 10 --out /tmp/check"),
    "objectives": ("gen-align objectives", "gen-align objectives --json"),
    "retrieve": (
        "gen-align retrieve eval --embeddings emb.safetensors --query text --gallery image",
        "gen-align retrieve index --embeddings emb.safetensors --modality image --out image.index",
    ),
    "retrieve index": ("gen-align retrieve index --embeddings emb.safetensors --modality image --out image.index",),
    "retrieve search": (
        "gen-align retrieve search --index image.index --queries emb.safetensors --modality text --k 5",
        "gen-align retrieve search --index image.index --queries emb.safetensors --modality text --rerank gare "
        "--head heads/gare --candidates 100",
        "gen-align retrieve search --index image.index --queries emb.safetensors --modality text --rerank invgc "
        "--train-embeddings train.safetensors",
    ),
    "retrieve train-head": (
        "gen-align retrieve train-head --head gare --embeddings train.safetensors --query text --gallery image "
        "--out heads/gare",
        "gen-align retrieve train-head --head gravi --embeddings train.safetensors --query audio --gallery image "
        "--out heads/gravi --epochs 20 --set kind=linear",
    ),
    "retrieve eval": (
        "gen-align retrieve eval --embeddings emb.safetensors --query audio --gallery image",
        "gen-align retrieve eval --embeddings test.safetensors --train-embeddings train.safetensors --query text "
        "--gallery image",
        "gen-align retrieve eval --embeddings test.safetensors --query text --gallery image --head heads/gare "
        "--head heads/gravi",
    ),
    "train": (
        "gen-align train --features cache/train --out runs/unialign --objective unialign",
        "gen-align train --config train.yaml --set lr=3e-4 --set objective_params.tau=0.5",
        "gen-align train --config train.yaml --resume",
    ),
}

DESCRIPTIONS: dict[str, str] = {
    "objectives": "List every registered training objective with its hyperparameters, their defaults and the "
    "paper equation each implements (--json: the same as JSON).",
    "retrieve index": "Build a FAISS index (exact, or IVF for large galleries) over one modality's L2-normalised "
    "embeddings of a safetensors file; the index records its source file.",
    "retrieve search": "Search an index with every row of one modality of a safetensors file; writes the top-k gallery "
    "ids (the manifest ids of a `gen-align embed` file) and scores per query as JSON. --rerank re-scores the index's "
    "top --candidates with a GARE or GraviAlign head, GRAM's volume, or InvGC (a two-stage search).",
    "retrieve train-head": "Train a GARE (pair-specific increments; gare.txt) or GraviAlign (Gaussian) retrieval head "
    "on the paired rows of an embeddings file; resumable from its --out folder, used by `retrieve search --rerank` and "
    "`retrieve eval --head`.",
    "mini build": "Write the procedural mini world: images, audio clips and captions of items with known attributes, "
    "and the train/test JSONL manifests (resumable; deterministic per seed).",
    "mini train": "Train every mini-world model from scratch in resumable, recipe-keyed stages (world, towers, "
    "features, heads, ablations, autoencoder, decoder, classifier); --ship copies the preset into the package.",
    "mini eval": "The reproduction table of a finished `mini train`: FID and attribute accuracy of T2I, A2I and "
    "(T+A)→I per objective, R@1, modality gaps, the decoder's self-reconstruction (--ablations: Tables 2 and 5).",
    "mini check": "What a user of the shipped mini preset sees: captions and clips of a world seed no model saw, one "
    "image each, judged against the ground truth per attribute.",
}


class ExamplesFormatter(argparse.HelpFormatter):
    """argparse's formatter, but the Examples epilog keeps one command per line (descriptions still wrap)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("Examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def attach(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every sub-command of ``parser`` its Examples epilog (and a description where it has none)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, child in action.choices.items():
            key = f"{path} {name}".strip()
            if key in DESCRIPTIONS and not child.description:
                child.description = DESCRIPTIONS[key]
            if key in EXAMPLES:
                child.epilog = "Examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[key])
                child.formatter_class = ExamplesFormatter
            attach(child, key)

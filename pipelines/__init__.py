"""Decoder adapters (Stable UnCLIP, Kandinsky 2.2, mini) and embedding blends: ``gen_align.pipelines``."""

"""`gen-align app`: a local web demo (Gradio) that mixes text, audio and an image and decodes the blend."""

from __future__ import annotations

import argparse

from gen_align.commands._decoding import add_model_arguments, add_sampling_arguments, model_options, sampling_options
from gen_align.errors import ConfigError


def check_port_free(host: str, port: int) -> None:
    """Refuse, before any model is loaded, a ``host:port`` another server holds (or this host cannot bind)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({err}); e.g. --host 127.0.0.1.") from err
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as err:
            raise ConfigError(
                f"cannot serve on {host}:{port} ({err.strerror or err}): another server holds the port or the "
                f"address is not this machine's; pick another with --port (e.g. --port {port % 65535 + 1})."
            ) from err


def run(args: argparse.Namespace) -> int:
    from gen_align.checks import integer, positive

    check_port_free(args.host, integer(args.port, "--port", low=1, high=65535))
    try:
        from gen_align.app.demo import Models, build_demo, launch
    except ImportError as err:
        raise ConfigError(f"the app needs gradio ({err}); install it with: pip install 'gradio>=5'.") from err
    max_seconds = positive(args.max_audio_seconds, "--max-audio-seconds")
    keep = integer(args.keep_models, "--keep-models", low=1)
    decode = sampling_options(args)
    decode.check()
    models = Models(model_options(args), max_audio_seconds=max_seconds)
    demo = build_demo(models, decode=decode, concurrency=args.concurrency, keep=keep)
    where = "a public share link and " if args.share else ""
    print(f"gen-align app: serving on {where}http://{args.host}:{args.port} (Ctrl+C stops it)")
    launch(demo, host=args.host, port=args.port, share=args.share, max_file_size=args.max_file_size)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="web demo: mix text, audio and an image and see the decoded blend",
        description="Load the space and decoder once and serve a Gradio page: a selector of the presets whose "
        "weights are present (and the --space checkpoint; the one chosen here is loaded at startup, the others when "
        "picked), a Generate tab (weights per input, slerp/lerp, seed, steps, guidance, number of images), an "
        "Interpolate tab (a strip from input A to B) and the inputs' cosine similarities and norms before/after "
        "calibration. Binds 127.0.0.1 unless --host says otherwise; a public link only with --share.",
    )
    s = p.add_argument_group("serving")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    s.add_argument("--concurrency", type=int, default=1, help="requests decoded at once; others queue (default 1)")
    s.add_argument("--max-audio-seconds", type=float, default=30.0, help="longest audio accepted (default 30)")
    s.add_argument("--max-file-size", default="20mb", help="largest upload accepted, e.g. 20mb (default 20mb)")
    s.add_argument(
        "--keep-models",
        type=int,
        default=2,
        help="presets kept loaded when switching in the page (default 2; 1: least memory)",
    )
    add_sampling_arguments(p)
    add_model_arguments(p)
    p.set_defaults(func=run)

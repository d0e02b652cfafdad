"""`chitchat serve`: serve the bot over HTTP (FastAPI on uvicorn), with a chat page at /.

The flags of the server's own settings are `ServeConfig`'s fields (chitchat.serve.config); the
engine and sampling flags are the chat's. See docs/serving.md.
"""

from __future__ import annotations

import ipaddress
import os
import sys

import torch
import uvicorn

from chitchat.engine.options import (add_engine_arguments, add_ranking_arguments, add_sampling_arguments, load_engine,
                                     ranking_from_args, sampling_from_args)
from chitchat.engine.settings import ChatSettings
from chitchat.errors import ChitchatError
from chitchat.options import add_options, options_from_args
from chitchat.serve.app import create_app, model_name
from chitchat.serve.config import ServeConfig, key_problem
from chitchat.serve.connections import file_limit, protocol_class

LIMITS = ("max_body_bytes", "max_text_chars", "max_history", "max_tokens", "max_n", "max_queue")
SESSIONS = ("max_sessions", "session_idle_s", "session_rate", "session_burst")
CONNECTIONS = ("max_connections", "keep_alive_timeout_s", "header_timeout_s", "body_timeout_s", "allowed_hosts")
BATCHING = ("batch_window_ms", "max_batch")


def add_arguments(p) -> None:
    add_engine_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-history-len", type=int, default=ChatSettings().max_history_len, metavar="N",
                   help="utterances of dialogue the model sees, the new one included (as in the chat)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (warning: no access log)")
    p.add_argument("--shutdown-timeout", type=float, default=30, metavar="S",
                   help="on SIGINT/SIGTERM, seconds to finish the requests in flight")
    every = {f for group in (LIMITS, SESSIONS, CONNECTIONS, BATCHING) for f in group}
    for title, names in (("limits (each a 4xx JSON error)", LIMITS), ("sessions", SESSIONS),
                         ("connections", CONNECTIONS), ("batching", BATCHING)):
        add_options(p, ServeConfig, group=title, skip=tuple(every - set(names)))
    add_sampling_arguments(p)
    add_ranking_arguments(p)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def config_from_args(args) -> ServeConfig:
    settings = ChatSettings(sampling_from_args(args), mmi=not args.no_mmi, max_history_len=args.max_history_len,
                            ranking=ranking_from_args(args))
    key = os.environ.get("CHITCHAT_API_KEY")
    if key is not None and key != "" and (problem := key_problem(key)):
        raise ChitchatError(problem)
    cfg = options_from_args(ServeConfig, args, settings=settings.validate(), api_key=key or None)
    if cfg.allowed_hosts is None and not is_loopback(getattr(args, "host", "127.0.0.1")):
        cfg.allowed_hosts = "*"  # reached by any name: the key is what protects it (a warning says so)
    return cfg


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise ChitchatError(f"--port {args.port} is not a port")
    if args.threads is not None and args.threads < 1:
        raise ChitchatError("--threads must be >= 1")
    if args.threads is None:
        args.threads = torch.get_num_threads()  # torch's default, one per core: /info shows the number
    cfg = config_from_args(args)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    engine = load_engine(args, say)
    app = create_app(engine, cfg)
    if not is_loopback(args.host) and not cfg.api_key:
        say(f"warning: listening on {args.host} with no CHITCHAT_API_KEY: anyone who can reach it may use it")
    connections = file_limit(cfg.max_connections, say)
    say(f"chitchat serve: model {model_name(engine.model_path)}"
        + (f", MMI {model_name(engine.mmi_path)}" if engine.mmi else ", no MMI")
        + f", http://{args.host}:{args.port} (OpenAPI at /openapi.json)" + (", bearer token on" if cfg.api_key else ""))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.shutdown_timeout, timeout_keep_alive=cfg.keep_alive_timeout_s,
                limit_concurrency=connections + 1,  # the connections held, each with a request (see connections.py)
                http=protocol_class(cfg.header_timeout_s, cfg.body_timeout_s, connections),
                h11_max_incomplete_event_size=16 * 1024)  # request line and headers: 16 KiB at most
    return 0

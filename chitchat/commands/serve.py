"""`chitchat serve`: serve the bot over HTTP (FastAPI on uvicorn), with a chat page at /.

The flags of the server's own settings are `ServeConfig`'s fields (chitchat.serve.config), where
it listens `ListenOptions`'; the engine flags and the reply settings are the chat's. See
docs/serving.md.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass

import torch
import uvicorn

from chitchat.engine.options import (add_engine_arguments, add_settings_arguments, engine_options_from_args,
                                     load_engine, settings_from_args)
from chitchat.errors import ChitchatError
from chitchat.options import add_options, option, options_from_args
from chitchat.serve.app import create_app, model_name
from chitchat.serve.config import ServeConfig, key_problem
from chitchat.serve.connections import HEAD_LIMIT, file_limit, protocol_class

LIMITS = ("max_body_bytes", "max_text_chars", "max_history", "max_tokens", "max_n", "max_queue")
SESSIONS = ("max_sessions", "client_sessions", "session_idle_s", "session_rate", "session_burst")
CONNECTIONS = ("max_connections", "client_connections", "keep_alive_timeout_s", "header_timeout_s", "body_timeout_s",
               "write_timeout_s", "forwarded_allow_ips", "allowed_hosts")
BATCHING = ("batch_window_ms", "max_batch")


@dataclass
class ListenOptions:
    """Where the server listens, what it logs, how it stops."""

    host: str = option("127.0.0.1", help="address to listen on (loopback by default)")
    port: int = option(8000, help="port to listen on")
    log_level: str = option("info", choices=("critical", "error", "warning", "info", "debug"),
                            help="uvicorn's log level (warning: no access log)")
    shutdown_timeout: float = option(30.0, metavar="S", help="on SIGINT/SIGTERM, seconds to finish the requests in flight")


def add_arguments(p) -> None:
    add_engine_arguments(p)
    add_options(p, ListenOptions)
    every = {f for group in (LIMITS, SESSIONS, CONNECTIONS, BATCHING) for f in group}
    for title, names in (("limits (each a 4xx JSON error)", LIMITS), ("sessions", SESSIONS),
                         ("connections", CONNECTIONS), ("batching", BATCHING)):
        add_options(p, ServeConfig, group=title, skip=tuple(every - set(names)))
    add_settings_arguments(p)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def config_from_args(args) -> ServeConfig:
    settings = settings_from_args(args)
    key = os.environ.get("CHITCHAT_API_KEY")  # set, even empty: a key is meant, and must be a good one
    if key is not None and (problem := key_problem(key)):
        raise ChitchatError(problem)
    cfg = options_from_args(ServeConfig, args, settings=settings, api_key=key)
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

    engine = load_engine(engine_options_from_args(args), say)
    if cfg.settings.retrieved and engine.index_path is None:
        say("no response index for this model: every candidate is sampled (--index DIR gives one)")
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
                http=protocol_class(cfg, connections),
                h11_max_incomplete_event_size=HEAD_LIMIT,  # h11's own limit, a backstop: the protocol answers 431 first
                # forwarding headers only from the proxies named (uvicorn's default trusts 127.0.0.1 and ::1)
                proxy_headers=cfg.forwarded_allow_ips is not None, forwarded_allow_ips=cfg.forwarded_allow_ips)
    return 0

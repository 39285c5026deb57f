"""Ray as a quiet guest on this machine: loopback-only, no telemetry, started and stopped by us.

Shared by the two users of Ray: the Flower baseline (``etree.protocols.flower``,
whose simulation engine runs on Ray) and the Ray training backend
(``etree.backends.ray``). Both start a private Ray on this machine the same way:

* telemetry, update checks and Ray usage stats are off;
* Ray runs on loopback only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when
  ``ray`` is first imported, and ``_node_ip_address=127.0.0.1``);
* HTTP proxy variables point at a closed loopback port, so the cloud-metadata
  probe that Ray's usage-stats dashboard process makes even with usage stats
  off (``requests`` to 169.254.169.254 and metadata.google.internal) never
  leaves the machine.

``benchmarks/check_no_outbound.py`` proves it with strace, for both users.
A Ray cluster of several machines (``[backend] address``) is joined without
any of this: there Ray must use the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, cast

from etree.core.errors import ProtocolError

logger = logging.getLogger(__name__)

# Set for the Ray processes (they inherit the environment when ``ray.init`` starts them).
GUEST_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences Ray's FutureWarning about accelerators
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node IP = loopback; a real multi-machine cluster must not set it
    "http_proxy": "http://127.0.0.1:9",  # port 9 (discard) is closed: metadata probes fail at once, locally
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost",  # Ray's own gRPC and HTTP stay direct
    "NO_PROXY": "127.0.0.1,localhost",
}


@contextlib.contextmanager
def guest_environment() -> Iterator[None]:
    """Set ``GUEST_ENVIRONMENT`` while Ray starts (and, for Flower, runs); restore the caller's values after."""
    saved = {name: os.environ.get(name) for name in GUEST_ENVIRONMENT}
    os.environ.update(GUEST_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def driver_pythonpath() -> str:
    """The driver's import path, for Ray workers (as Flower's RayBackend does): they must import
    what the driver can (``etree``, ``clients``)."""
    return os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])


def start_loopback_ray(num_cpus: int, *, field: str, engine: str, busy: str) -> tuple[dict[str, Any], str]:
    """Start a private Ray on loopback (call inside ``guest_environment``); return the init
    arguments and the session folder (Ray's logs live there, and its processes carry its name).

    Errors are one ``ProtocolError`` line: ``{field}: Ray is already running in this process; {busy}``
    or ``{field}: {engine} could not start ({reason})``.
    """
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        raise ProtocolError(f"{field}: Ray is already running in this process; {busy}")
    if ray_constants.ENABLE_RAY_CLUSTER:  # read once at import: an import before ours saw no loopback setting
        logger.warning(
            "%s: Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; "
            "the driver may contact Ray through the host's address instead of loopback",
            field,
        )
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "num_cpus": num_cpus,
        "_node_ip_address": "127.0.0.1",
        "logging_level": "ERROR",
        "log_to_driver": False,
    }
    try:
        context = ray.init(runtime_env={"env_vars": {"PYTHONPATH": driver_pythonpath()}}, **init_args)
    except Exception as error:  # Ray raises many types here (ConnectionError, RuntimeError, OSError...)
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise ProtocolError(f"{field}: {engine} could not start ({one_line(error)})") from error
    return init_args, session_dir(context)


def session_dir(context: Any) -> str:
    """The session folder of a ``ray.init`` result (a RayContext, typed as its base)."""
    return str(cast(Any, context).address_info["session_dir"])


def one_line(error: BaseException) -> str:
    """An exception's message on one line (Ray's span several), or its type's name."""
    return " ".join(str(error).split()) or type(error).__name__

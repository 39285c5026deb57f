"""Check that a Flower run, or a run on the Ray backend, opens no connection beyond this machine's loopback.

Runs a tiny ``flower`` protocol run (3 devices of sklearn digits, 1 round), or
with ``--workload ray`` a tiny ``fedavg`` run whose training runs on the Ray
backend (``[backend] kind = "ray"``, 2 workers), under
``strace -f -e trace=connect``, so every process Flower and Ray start is
traced, then lists every AF_INET/AF_INET6 ``connect`` address. It fails on any
address outside 127.0.0.0/8 and ::1 (AF_UNIX and other families are local and
ignored). Why: Ray's usage-stats dashboard process probes cloud metadata
(169.254.169.254, metadata.google.internal) even with usage stats off, and
Ray discovers its node IP by a UDP connect to 8.8.8.8; ``etree.protocols.flower``
and ``etree.backends.ray`` set (``etree.backends.ray_guest``) the environment that keeps all of
it on loopback, and this proves it.

Run: ``.venv/bin/python benchmarks/check_no_outbound.py`` (needs ``strace``:
``apt-get install -y strace``). Exit status 0: only loopback; 1: an outbound
connect (listed); 2: strace missing or the traced run failed.
``--run`` runs the workload alone, without strace.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sa_family=AF_INET6, sin6_port=htons\((\d+)\),.*?inet_pton\(AF_INET6, "([^"]+)"')


@dataclass(frozen=True)
class Connect:
    """One traced connect to an IP address."""

    family: str
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback


def parse_connects(trace: str) -> tuple[list[Connect], list[str]]:
    """IP connects found in strace output, and the IP-family connect lines that could not be read.

    An unreadable AF_INET/AF_INET6 line is returned rather than skipped, so
    that a format change can never hide a connect.
    """
    connects: list[Connect] = []
    unread: list[str] = []
    for line in trace.splitlines():
        if "connect(" not in line or "AF_INET" not in line:
            continue
        if match := _INET.search(line):
            connects.append(Connect("AF_INET", match.group(2), int(match.group(1))))
        elif match := _INET6.search(line):
            connects.append(Connect("AF_INET6", match.group(2), int(match.group(1))))
        else:
            unread.append(line)
    return connects, unread


def run_tiny(workload_kind: str = "flower") -> None:
    """A 3-device, 1-round run on sklearn digits (the workload strace watches): the ``flower``
    protocol, or (``ray``) in-engine ``fedavg`` training on the Ray backend with 2 workers."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    import topologies
    from clients.classification.fleet import pack_fleet
    from clients.classification.models import build_model
    from clients.params import init_params
    from clients.train_config import TrainConfig
    from etree import Workload, make_protocol, run_protocol
    from etree.backends import make_trainer

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    model = build_model("softmax", (64,), 10)
    workload = Workload(
        model=model,
        initial=init_params(model, 0),
        data=pack_fleet(x, y, np.array_split(order[:150], 3)),
        x_test=torch.from_numpy(x[order[150:300]]),
        y_test=torch.from_numpy(y[order[150:300]]),
        graph=topologies.build_topology("random_geometric", 3, seed=0),
        train=TrainConfig(lr=0.1, batch_size=8),
        seed=0,
        input_shape=(64,),
        num_classes=10,
        rounds=1,
        trainer=make_trainer(workload_kind if workload_kind == "ray" else "local", workers=2),
    )
    name = "flower" if workload_kind == "flower" else "fedavg"
    try:
        records = list(run_protocol(make_protocol(name, name, {}), workload, rounds=1, eval_every=1))
    finally:
        workload.trainer.close()
    accuracy = [r.value for r in records if r.metric == "accuracy"]
    print(f"{workload_kind} run finished: accuracy {accuracy[0]:.3f} -> {accuracy[-1]:.3f}")


def _strace_command(strace: str) -> list[str]:
    """strace following every child, recording connects only; with ``--seccomp-bpf`` where the
    kernel and strace allow it (untraced system calls then run at full speed: ~2x faster here)."""
    command = [strace, "-f", "-qq", "-e", "trace=connect", "-e", "signal=none"]
    probe = subprocess.run([*command, "--seccomp-bpf", "-o", os.devnull, "true"], capture_output=True, check=False)
    return [*command, "--seccomp-bpf"] if probe.returncode == 0 else command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="run the tiny workload only, without strace")
    parser.add_argument(
        "--workload", choices=("flower", "ray"), default="flower", help="flower protocol, or fedavg on the Ray backend"
    )
    parser.add_argument("--keep-trace", type=Path, help="also write the raw strace output here")
    args = parser.parse_args(argv)
    if args.run:
        run_tiny(args.workload)
        return 0
    strace = shutil.which("strace")
    if strace is None:
        print("check_no_outbound: strace is not installed; install it (apt-get install -y strace)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        trace_file = Path(folder) / "connect.trace"
        command = [
            *_strace_command(strace),
            "-o",
            str(trace_file),
            sys.executable,
            str(Path(__file__).resolve()),
            "--run",
            "--workload",
            args.workload,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        trace = trace_file.read_text() if trace_file.exists() else ""
    if args.keep_trace:
        args.keep_trace.write_text(trace)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        print(
            f"check_no_outbound: the traced run failed (exit {done.returncode}):\n{done.stderr[-4000:]}",
            file=sys.stderr,
        )
        return 2
    connects, unread = parse_connects(trace)
    outside = [c for c in connects if not c.loopback]
    counts = Counter(f"{c.address}:{c.port}" if not c.loopback else c.address for c in connects)
    print(f"{len(connects)} IP connects: " + ", ".join(f"{a} x{n}" for a, n in sorted(counts.items())))
    if unread:
        print("unreadable IP connect lines:\n  " + "\n  ".join(unread), file=sys.stderr)
    if outside:
        print("OUTBOUND: " + ", ".join(sorted({f"{c.family} {c.address}:{c.port}" for c in outside})), file=sys.stderr)
    if outside or unread:
        return 1
    if not connects:
        print("check_no_outbound: no IP connect was traced at all; strace saw nothing useful", file=sys.stderr)
        return 2
    print("only loopback: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

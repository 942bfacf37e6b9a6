"""Stream log records from many services to one central aggregator over fanout, instead of syslog.

Each service adds zmqkit's ``LogHandler`` to an ordinary logger: every record is published as JSON on
``logs.<service>.<level>``, without ever blocking the service. The aggregator binds one Subscriber, narrows its
interest with subject wildcards, and counts what arrived and what it missed (sequence numbers make drops
visible, unlike syslog over UDP). From the shell, ``zmqkit logs --bind tcp://*:5557 --level warning`` does the
same job, like ``journalctl -f`` across machines.

    python examples/log_stream.py --services 3 --events 2000
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections import Counter

from zmqkit.patterns import LogHandler, Subscriber


def service(name: str, aggregator: str, events: int) -> None:
    """One service: an ordinary logger with a LogHandler (its socket lives in the handler's own thread)."""
    handler = LogHandler(name, connect=aggregator)
    handler.wait_for_subscribers(1, timeout=10)  # the aggregator is listening: nothing is lost at the start
    log = logging.getLogger(f"demo.{name}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    for i in range(events):
        if i % 100 == 99:
            log.error("request %d failed", i)
        else:
            log.info("request %d served", i)
        log.debug("request %d details", i)  # published, but the aggregator did not subscribe to debug
    log.removeHandler(handler)
    handler.close()  # sends what is still queued


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=3)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()

    # The aggregator binds; services come and go and connect to it. It wants info and error records only.
    with Subscriber(bind="tcp://127.0.0.1:0", topics=["logs.*.info", "logs.*.error"]) as aggregator:
        names = [f"svc{i}" for i in range(args.services)]
        threads = [threading.Thread(target=service, args=(n, aggregator.endpoint, args.events)) for n in names]
        for t in threads:
            t.start()
        counts: Counter[tuple[str, str]] = Counter()
        for _ in range(args.services * args.events):
            record = aggregator.recv(timeout=30).body
            counts[record["service"], record["level"].lower()] += 1
        for t in threads:
            t.join()
        print(f"{'service':<8} {'info':>6} {'error':>6}")
        for name in names:
            print(f"{name:<8} {counts[name, 'info']:>6} {counts[name, 'error']:>6}")
        print(f"received {aggregator.stats()['received']} messages, missed {aggregator.missed}")


if __name__ == "__main__":
    main()

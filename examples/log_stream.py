"""Stream log events from many services to one central aggregator over fanout, instead of syslog.

Each service attaches a logging handler that publishes every record on ``logs.<service>.<level>``; the
aggregator binds one Subscriber, narrows its interest with subject wildcards, and counts what arrived and what
it missed (sequence numbers make drops visible, unlike syslog over UDP).

    python examples/log_stream.py --services 3 --events 2000
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections import Counter

from zmqkit.patterns import Publisher, Subscriber


class PublishHandler(logging.Handler):
    """A logging handler that publishes each record as JSON on ``logs.<service>.<level>``."""

    def __init__(self, publisher: Publisher, service: str) -> None:
        super().__init__()
        self.publisher = publisher
        self.service = service

    def emit(self, record: logging.LogRecord) -> None:
        topic = f"logs.{self.service}.{record.levelname.lower()}"
        self.publisher.publish(topic, {"msg": record.getMessage(), "logger": record.name, "at": record.created})


def service(name: str, aggregator: str, events: int) -> None:
    """One service: its own publisher (sockets stay in the thread that made them) and an ordinary logger."""
    with Publisher(connect=aggregator, codec="json") as publisher:
        publisher.wait_for_subscribers(1, timeout=10)  # the aggregator is listening: nothing is lost at the start
        log = logging.getLogger(f"demo.{name}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(PublishHandler(publisher, name))
        for i in range(events):
            if i % 100 == 99:
                log.error("request %d failed", i)
            else:
                log.info("request %d served", i)
        publisher.publish(f"done.{name}", events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=3)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()

    # The aggregator binds; services come and go and connect to it. It wants info and error records, and the
    # "done" notes; everything else (say, debug) would be filtered out before it costs anything.
    with Subscriber(bind="tcp://127.0.0.1:0", topics=["logs.*.info", "logs.*.error", "done."]) as aggregator:
        names = [f"svc{i}" for i in range(args.services)]
        threads = [threading.Thread(target=service, args=(n, aggregator.endpoint, args.events)) for n in names]
        for t in threads:
            t.start()
        counts: Counter[tuple[str, str]] = Counter()
        finished = 0
        while finished < len(names):
            msg = aggregator.recv(timeout=30)
            if msg.topic.startswith("done."):
                finished += 1
                continue
            _, name, level = msg.topic.split(".")
            counts[name, level] += 1
        for t in threads:
            t.join()
        print(f"{'service':<8} {'info':>6} {'error':>6}")
        for name in names:
            print(f"{name:<8} {counts[name, 'info']:>6} {counts[name, 'error']:>6}")
        print(f"received {aggregator.stats()['received']} messages, missed {aggregator.missed}")


if __name__ == "__main__":
    main()

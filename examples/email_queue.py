"""Sign-up confirmations through a pipeline: the front end returns at once, workers deliver the e-mail.

A temporary SMTP failure is retried later with a growing delay; an address that can never work is
dead-lettered after a few attempts, where an operator can inspect it (and resubmit it once fixed).

    python examples/email_queue.py
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from zmqkit.patterns import Backoff, Producer, Retry, Worker

attempts: dict[str, list[float]] = {}
lock = threading.Lock()


def send_confirmation(signup: dict[str, str]) -> str:
    """The worker's handler: pretend to talk to an SMTP server."""
    address = signup["email"]
    with lock:
        attempts.setdefault(address, []).append(time.monotonic())
        tries = len(attempts[address])
    if address.endswith("@greylisted.example") and tries < 3:
        raise ConnectionError("451 greylisted, try again later")  # temporary: retried with backoff
    if address.endswith("@busy.example") and tries == 1:
        raise Retry(delay=0.2, reason="mailbox busy")  # the handler picks the delay itself
    if "@" not in address or address.endswith("@invalid.example"):
        raise ValueError(f"550 no such user: {address}")  # permanent: ends in the dead-letter list
    return f"sent to {address}"


def sign_up(producer: Producer, name: str, email: str) -> str:
    """The front end: enqueue and answer the user at once."""
    producer.send({"name": name, "email": email})
    return f"Thanks {name}, check your inbox."


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  worker log: %(message)s")
    backoff = Backoff(base=0.1, factor=2.0, maximum=1.0, jitter=0.5)  # short delays for the demo
    with Producer(bind="tcp://127.0.0.1:0", backoff=backoff, max_attempts=3) as producer:
        # The worker pool: in production, `Worker(...).run()` in its own processes on other machines.
        pool = Worker(send_confirmation, connect=producer.endpoint, concurrency=2, credit=4).start()
        try:
            started = time.monotonic()
            for name, email in [
                ("Ada", "ada@example.org"),
                ("Grace", "grace@greylisted.example"),
                ("Linus", "linus@busy.example"),
                ("Mallory", "mallory@invalid.example"),
            ]:
                print(sign_up(producer, name, email))
            print(f"front end answered 4 sign-ups in {(time.monotonic() - started) * 1000:.1f} ms")
            producer.join(timeout=30)
        finally:
            pool.close()
        for result in producer.results(timeout=0):
            print("delivered:", result.value)
        for address, times in sorted(attempts.items()):
            gaps = ", ".join(f"{b - a:.2f}s" for a, b in itertools.pairwise(times))
            print(f"{address}: {len(times)} attempt(s){'; waited ' + gaps if gaps else ''}")
        for letter in producer.dead_letters():
            print(f"dead letter: {letter.value['email']} after {letter.attempts} attempts: {letter.error}")
        print("stats:", producer.stats())


if __name__ == "__main__":
    main()

"""Thumbnails: a front end enqueues uploaded images, a pool of worker processes shrinks them, results
stream back to a Sink as they are done.

    python examples/thumbnails.py
"""

from __future__ import annotations

import multiprocessing as mp
import random
import sys

from zmqkit.patterns import Producer, Sink, Worker


def thumbnail(image: dict[str, object]) -> dict[str, object]:
    """Shrink a grey-scale image 4x by averaging 4x4 blocks (stand-in for a real imaging library)."""
    width, height = int(image["width"]), int(image["height"])  # type: ignore[call-overload]
    pixels = bytes.fromhex(str(image["pixels"]))
    small = bytearray()
    for y in range(0, height, 4):
        for x in range(0, width, 4):
            block = [pixels[(y + dy) * width + x + dx] for dy in range(4) for dx in range(4)]
            small.append(sum(block) // 16)
    return {"name": image["name"], "width": width // 4, "height": height // 4, "bytes": len(small)}


def worker_process(producer_endpoint: str, sink_endpoint: str) -> None:
    """One thumbnailer: takes images from the producer, pushes each thumbnail to the sink; stops on SIGTERM."""
    Worker(thumbnail, connect=producer_endpoint, sink=sink_endpoint, credit=2).run()


def main(count: int = 12, workers: int = 3) -> None:
    rng = random.Random(7)
    with Sink(bind="tcp://127.0.0.1:0") as sink, Producer(bind="tcp://127.0.0.1:0", codec="json") as producer:
        ctx = mp.get_context("spawn")
        pool = [ctx.Process(target=worker_process, args=(producer.endpoint, sink.endpoint)) for _ in range(workers)]
        for proc in pool:
            proc.start()
        try:
            for i in range(count):  # the front end: enqueue and move on
                side = rng.choice([32, 64, 96])
                pixels = bytes(rng.randrange(256) for _ in range(side * side)).hex()
                producer.send({"name": f"photo-{i}.png", "width": side, "height": side, "pixels": pixels})
            done = 0
            for result in sink.results(timeout=30):  # thumbnails stream back as they finish
                done += 1
                print(f"{result.value['name']}: {result.value['width']}x{result.value['height']} thumbnail")
                if done == count:
                    break
            producer.join(timeout=30)
            print(f"{done} thumbnails; stats: {producer.stats()}")
        finally:
            for proc in pool:
                proc.terminate()  # SIGTERM: each worker finishes what it holds, then exits
            for proc in pool:
                proc.join(30)
    sys.exit(0 if done == count else 1)


if __name__ == "__main__":
    main()

"""Faults: a save killed half way leaves the previous state readable."""

import random
import signal
import subprocess
import sys
import time

import pytest

import diffusers_unlearn as du

pytestmark = pytest.mark.random_targets  # see conftest.py

CHILD = """
import sys
import diffusers_unlearn as du
folders = sys.argv[1:-1]
a, b, c1, c2 = (du.UnlearningAdapter.from_pretrained(f) for f in folders)
print("saving", flush=True)
while True:
    for last in (c1, c2):  # the same name, other content: the chain's third folder changes every time
        du.UnlearningStack([a, b, last]).save_pretrained(sys.argv[-1])
"""


def test_a_stack_save_killed_at_random_points_leaves_a_verified_chain(sd_pipe, tmp_path):
    a = du.erase(sd_pipe, "cat")
    sd_pipe.load_unlearning(a)
    b = du.erase(sd_pipe, "dog")
    sd_pipe.load_unlearning(b)
    c1, c2 = du.erase(sd_pipe, "tree"), du.erase(sd_pipe, "tree", neighbors=["horse"])
    assert c1.name == c2.name and c1.metadata["adapter_id"] != c2.metadata["adapter_id"]
    folders = [x.save_pretrained(tmp_path / "parts" / str(i)) for i, x in enumerate((a, b, c1, c2))]
    chain = tmp_path / "chain"
    du.UnlearningStack([a, b]).save_pretrained(chain)

    rng = random.Random(0)
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, *map(str, folders), str(chain)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "saving"
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        stack = du.UnlearningStack.from_pretrained(chain)  # verified: every weights file matches its sha256
        ids = [x.metadata["adapter_id"] for x in stack]
        assert (
            ids in ([a.metadata["adapter_id"], b.metadata["adapter_id"]],)
            or ids[:2]
            == [
                a.metadata["adapter_id"],
                b.metadata["adapter_id"],
            ]
            and ids[2] in (c1.metadata["adapter_id"], c2.metadata["adapter_id"])
        )
    # (the former in-place re-save fails this test: measured, a sha256 mismatch after a kill)


def test_two_pipelines_in_two_threads_do_not_see_each_others_removals():
    import threading

    from conftest import make_sd_pipeline

    pipes = [make_sd_pipeline(), make_sd_pipeline()]
    removals = [du.erase(pipes[0], "cat"), du.erase(pipes[1], "dog")]
    errors, seen = [], [[], []]

    def worker(index: int) -> None:
        pipe, removal = pipes[index], removals[index]
        try:
            for _ in range(5):
                pipe.load_unlearning(removal, mode="fused" if index else "adapters")
                seen[index].append([(u.name, u.verified) for u in pipe.unlearning])
                pipe.unload_unlearning()
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert seen[0] == [[("no-cat", True)]] * 5 and seen[1] == [[("no-dog", True)]] * 5
    assert pipes[0].unlearning == () and pipes[1].unlearning == ()

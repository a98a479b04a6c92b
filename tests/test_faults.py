"""Faults: a save killed half way leaves the previous state readable."""

import random
import signal
import subprocess
import sys
import time

import diffusers_unlearn as du

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
    seen = set()
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
        seen.add(ids[-1])
    assert len(seen) >= 2  # the kills landed at different points of the loop

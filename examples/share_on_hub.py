"""Share a chain of removals on the Hugging Face Hub, load it elsewhere, append to it (needs Hub access and a
write token: `hf auth login`; not run in CI, where the Hub is unreachable — tests/test_hub.py runs the same calls
against a local server).

    python examples/share_on_hub.py my-org/no-digits
"""

import sys

import diffusers_unlearn
from diffusers_unlearn import digits, workflows
from diffusers_unlearn.digits.concepts import Concept


def main(repo_id: str) -> None:
    # A compliance team makes the chain and publishes it (model card, manifest with sha256 of every file).
    pipe = digits.load_pipeline()
    stack = diffusers_unlearn.UnlearningStack()
    for concept in (Concept(7), Concept(3, "blue")):
        adapter = diffusers_unlearn.erase(pipe, **concept.erase_kwargs())
        pipe.load_unlearning(adapter)
        stack.append(adapter)
    commit = stack.push_to_hub(repo_id, private=True)
    print("published", commit.commit_url)

    # Later: one more removal, appended safely (another team's concurrent append cannot be overwritten).
    adapter = diffusers_unlearn.erase(pipe, **Concept(colour="yellow").erase_kwargs())
    workflows.append(repo_id, adapter, retry=True)

    # A product team loads the chain with one line, every file verified before it touches the pipeline.
    fresh = digits.load_pipeline()
    fresh.load_unlearning(repo_id, mode="fused")
    print([u.name for u in fresh.unlearning])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "my-org/no-digits")

"""Continual removal over time with a stack, on the embedded digits model (offline).

Three requests arrive one after another; each removal is made on top of the chain, checked, and saved with it.
Later, one request is withdrawn: the removals made after it are re-solved without it.

    python examples/continual_stack.py
"""

import tempfile

import diffusers_unlearn
from diffusers_unlearn import digits
from diffusers_unlearn.digits import DigitsConceptScorer
from diffusers_unlearn.digits.concepts import Concept
from diffusers_unlearn.evaluation import evaluate


def forget_accuracy(pipe, concepts) -> dict[str, float]:
    """Share of images that still show each concept (8 images per prompt, fixed seeds)."""
    result = evaluate(pipe, DigitsConceptScorer(), forget=[c.forget_probe() for c in concepts],
                      images_per_prompt=8, num_inference_steps=20, progress=False)  # fmt: skip
    return {name: round(value, 2) for name, value in result.forget.items()}


def main() -> None:
    pipe = digits.load_pipeline()
    # Not "four" third: "seven" is mapped to fours (the model's own choice), and erasing "four" after it moves
    # what "no-seven" protects, which the check refuses (collateral 0.52 > 0.5).
    requests = [Concept(7), Concept(3, "blue"), Concept(5)]
    stack = diffusers_unlearn.UnlearningStack()
    with tempfile.TemporaryDirectory() as folder:
        for concept in requests:  # months apart, in practice
            adapter = diffusers_unlearn.erase(pipe, **concept.erase_kwargs())
            pipe.load_unlearning(adapter, check=True)  # refuses to load a removal that undoes an earlier one
            stack.append(adapter)
            stack.save_pretrained(folder)  # the manifest is rewritten last, atomically
            print(f"removed {concept.name!r}; chain: {stack.names}")
        print("still generated:", forget_accuracy(pipe, requests))
        print(stack.check(pipe))

        # Withdraw the second request: "no-five", made on top of it, is re-solved without it.
        pipe.unload_unlearning()
        stack.remove("no-blue-three", pipe=pipe)
        print("after withdrawal:", stack.names, "| re-solved:", stack["no-five"].metadata["resolved"])

        # Deploy the chain as one LoRA pass.
        pipe.load_unlearning(stack, mode="merged")
        print("loaded:", [(u.name, u.members) for u in pipe.unlearning])
        print("still generated:", forget_accuracy(pipe, requests))


if __name__ == "__main__":
    main()

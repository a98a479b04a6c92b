"""Hub push and pull of removals and chains, offline, through the real `huggingface_hub` client.

Pushes and pulls go end to end through `HfApi(endpoint=...)`, `snapshot_download` and `hf_hub_download` against the
small Hub look-alike in `hub_server.py` (127.0.0.1, files on disk); offline pulls read a Hugging Face cache, one of
them written by hand. The tests go through the public calls (`push_to_hub`, `from_pretrained("org/name")`,
`pipe.load_unlearning("org/name")`, `workflows.append` / `remove`, `hub.download`); the last test checks that the
former `hub` functions still work, with a `FutureWarning`.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import generate, make_sd_pipeline
from hub_server import HubServer
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants

import diffusers_unlearn as du
from diffusers_unlearn import hub
from diffusers_unlearn.adapter import WEIGHTS_NAME, sha256_file
from diffusers_unlearn.errors import ConcurrentUpdateError
from diffusers_unlearn.manifest import MANIFEST_NAME, read_manifest

pytestmark = pytest.mark.random_targets  # see conftest.py

PROMPT = "a photo of a cat"
TOKEN = "hf_test"


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path, monkeypatch):
    """A private Hugging Face cache and a test token; online unless a test says otherwise."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def server(tmp_path):
    with HubServer(tmp_path / "hub-server") as srv:
        yield srv
    assert srv.errors == []  # the server never failed on a request of the real client


@pytest.fixture
def kw(server):
    return {"endpoint": server.url, "token": TOKEN}


@pytest.fixture(scope="module")
def removals():
    """`chain`: cat, dog, tree, each made on top of the previous ones; `image`: the pipeline with the chain;
    `on_cat`: dog and tree each made on top of cat only; `secret`: a redacted removal; `foreign`: made for other
    base weights."""
    pipe = make_sd_pipeline()
    chain = []
    for concept in ("cat", "dog", "tree"):
        adapter = du.erase(pipe, concept, neighbors=["horse"])
        pipe.load_unlearning(adapter)
        chain.append(adapter)
    image = generate(pipe, PROMPT)
    pipe.unload_unlearning()
    pipe.load_unlearning(chain[0])
    on_cat = [du.erase(pipe, concept, name=f"{concept}-on-cat") for concept in ("dog", "tree")]
    pipe.unload_unlearning()
    secret = du.erase(pipe, "horse", redact=True)
    foreign = du.erase(make_sd_pipeline(seed=1), "cat")
    return SimpleNamespace(chain=chain, image=image, on_cat=on_cat, secret=secret, foreign=foreign)


def assert_same_removal(a: du.UnlearningAdapter, b: du.UnlearningAdapter) -> None:
    assert a.metadata == b.metadata
    assert a.lora_weights.keys() == b.lora_weights.keys() and a.probes.keys() == b.probes.keys()
    for key in a.lora_weights:
        assert torch.equal(a.lora_weights[key], b.lora_weights[key]), key
    for key in a.probes:
        assert torch.equal(a.probes[key], b.probes[key]), key


def manifest_at(server: HubServer, repo_id: str, revision: str = "main") -> dict:
    return json.loads(server.files(repo_id, revision)[MANIFEST_NAME])


def test_push_then_pull_a_chain_end_to_end(server, kw, removals):
    info = du.UnlearningStack(removals.chain).push_to_hub("org/no-pets", **kw)
    assert info.oid == server.head("org/no-pets")
    endpoints = {(method, path.split("?")[0]) for method, path in server.requests}
    assert {("POST", "/api/repos/create"), ("POST", "/api/models/org/no-pets/preupload/main")} <= endpoints
    assert ("POST", "/api/models/org/no-pets/commit/main") in endpoints
    files = server.files("org/no-pets")
    assert {"README.md", MANIFEST_NAME, f"adapters/002-no-dog/{WEIGHTS_NAME}"} <= set(files)

    folder = hub.download("org/no-pets", **kw)
    assert folder.name == info.oid  # the commit that was downloaded
    stack = du.UnlearningStack.from_pretrained("org/no-pets", **kw)
    assert stack.names == ["no-cat", "no-dog", "no-tree"]
    for pulled, made in zip(stack, removals.chain, strict=True):
        assert_same_removal(pulled, made)
    pipe = make_sd_pipeline()
    pipe.load_unlearning(stack)
    assert np.allclose(generate(pipe, PROMPT), removals.image, atol=1e-5)

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "diffusers"
    assert {"lora", "concept-erasure", "unlearning"} <= set(card.data.tags)
    rows = [line for line in card.text.splitlines() if line.startswith("| 1 ") or line.startswith("| 3 ")]
    assert "`no-cat`" in rows[0] and "`adapters/001-no-cat`" in rows[0] and "no-cat, no-dog" in rows[1]
    forget_residual = f"{removals.chain[1].metadata['figures']['forget_residual']:.3g}"
    assert any(line.startswith("| `no-dog` |") and forget_residual in line for line in card.text.splitlines())


def test_single_removal_repo_is_a_plain_diffusers_lora_and_the_card_snippet_runs(server, kw, removals):
    cat = removals.chain[0]
    cat.push_to_hub("org/no-cat", **kw)
    assert {WEIGHTS_NAME, MANIFEST_NAME, "README.md"} <= set(server.files("org/no-cat"))
    assert_same_removal(du.UnlearningAdapter.from_pretrained("org/no-cat", **kw), cat)

    folder = hub.download("org/no-cat", **kw)
    plain = make_sd_pipeline()
    plain.load_lora_weights(str(folder))  # vanilla diffusers, no plugin
    ours = make_sd_pipeline()
    ours.load_unlearning(cat)
    assert np.allclose(generate(plain, PROMPT), generate(ours, PROMPT), atol=1e-5)

    # appending to it turns it into a chain: its files move under adapters/, unchanged
    sha = manifest_at(server, "org/no-cat")["entries"][0]["sha256"]
    du.workflows.append("org/no-cat", removals.chain[1], **kw)
    entries = manifest_at(server, "org/no-cat")["entries"]
    assert [(e["path"], e["sha256"]) for e in entries][0] == ("adapters/001-no-cat", sha)
    assert WEIGHTS_NAME not in server.files("org/no-cat")
    assert du.UnlearningStack.from_pretrained("org/no-cat", **kw).names == ["no-cat", "no-dog"]

    # the card's "diffusers alone" snippet for a chain, run as written (the repo id pointed at the pulled folder)
    du.UnlearningStack(removals.chain).push_to_hub("org/no-pets", **kw)
    folder = hub.download("org/no-pets", **kw)
    snippet = (folder / "README.md").read_text().split("With diffusers alone")[1].split("```py")[1].split("```")[0]
    snippet = "\n".join(line for line in snippet.splitlines() if "import" not in line and "pipe = " not in line)
    plain = make_sd_pipeline()
    exec(snippet.replace("'org/no-pets'", repr(str(folder))), {"pipe": plain})
    assert sorted(plain.get_active_adapters()) == ["no-cat", "no-dog", "no-tree"]
    assert np.allclose(generate(plain, PROMPT), removals.image, atol=1e-5)


def test_card_shows_redacted_removals_the_verdict_and_the_base_model(removals):
    cat = removals.chain[0]
    named = du.UnlearningAdapter(cat.lora_weights, {**cat.metadata, "base_model": "org/tiny-sd"}, cat.probes)
    report = du.UnlearningStack([cat, removals.secret]).check(make_sd_pipeline())
    card = hub.model_card([named, removals.secret], repo_id="org/x", report=report)
    same = ModelCard(str(card))  # what the Hub stores parses back
    assert same.data.base_model == "org/tiny-sd" and same.data.library_name == "diffusers"
    row = next(line for line in same.text.splitlines() if line.startswith("| 2 "))
    assert f"`{removals.secret.name}`" in row and "*redacted*" in row and "horse" not in same.text
    assert ("Verdict: **PASSED**" if report.passed else "Verdict: **FAILED") in same.text
    assert "DiffusionPipeline.from_pretrained('org/tiny-sd')" in same.text
    assert "Not recorded" in str(hub.model_card([cat]))  # no report, no verdict


def test_two_concurrent_appends_cannot_overwrite_each_other(server, kw, removals):
    cat, (dog, tree) = removals.chain[0], removals.on_cat

    def append_both(repo_id: str, retry: bool) -> tuple[dict, str]:
        head = du.UnlearningStack([cat]).push_to_hub(repo_id, **kw).oid
        server.hold_commits(2)  # both appends read the same head before either commits
        results = {}

        def append(adapter):
            try:
                results[adapter.name] = du.workflows.append(repo_id, adapter, retry=retry, **kw)
            except Exception as error:  # noqa: BLE001 - the test inspects it
                results[adapter.name] = error

        threads = [threading.Thread(target=append, args=(a,)) for a in (dog, tree)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        return results, head

    results, head = append_both("org/race", retry=False)
    failed = [name for name, r in results.items() if isinstance(r, ConcurrentUpdateError)]
    assert len(failed) == 1, results
    (won,) = {dog.name, tree.name} - set(failed)
    error = results[failed[0]]
    assert "retry=True" in str(error) and error.parent_commit == head
    assert [e["name"] for e in manifest_at(server, "org/race")["entries"]] == ["no-cat", won]

    with pytest.warns(UserWarning, match="landed on the chain first"):  # the retried one was not made on the other
        results, _ = append_both("org/race-retry", retry=True)
    assert all(r.oid for r in results.values()), results
    names = [e["name"] for e in manifest_at(server, "org/race-retry")["entries"]]
    assert names[0] == "no-cat" and sorted(names[1:]) == sorted([dog.name, tree.name])
    assert du.UnlearningStack.from_pretrained("org/race-retry", **kw).names == names


def test_a_tag_resolves_to_one_commit_which_is_what_gets_recorded(server, kw, removals):
    cat, dog, tree = removals.chain
    api = HfApi(**kw)
    first = du.UnlearningStack([cat, dog]).push_to_hub("org/no-pets", **kw)
    api.create_tag("org/no-pets", tag="v1")
    du.workflows.append("org/no-pets", tree, **kw)  # main moves on, v1 stays
    before = len(server.requests)
    assert du.UnlearningStack.from_pretrained("org/no-pets", revision="v1", **kw).names == ["no-cat", "no-dog"]
    paths = [path.split("?")[0] for _, path in server.requests[before:]]
    assert [p for p in paths if "/revision/" in p] == ["/api/models/org/no-pets/revision/v1"]  # resolved once
    assert all(f"/{first.oid}/" in p for p in paths if "/resolve/" in p or "/tree/" in p)  # then only the commit

    # a chain referencing another repo records the commit the tag pointed to, not the tag
    dog.push_to_hub("org/no-dog", **kw)
    api.create_tag("org/no-dog", tag="v2")
    pinned = server.head("org/no-dog")
    du.UnlearningStack([cat]).push_to_hub("org/mix", **kw)
    du.workflows.append("org/mix", "org/no-dog", source_revision="v2", **kw)
    entry = manifest_at(server, "org/mix")["entries"][1]
    assert entry["repo_id"] == "org/no-dog" and entry["revision"] == pinned and entry["path"] == "."
    removals.secret.push_to_hub("org/no-dog", **kw)  # the other repo moves on
    mix = hub.download("org/mix", **kw)
    resolved = hub.resolve_entries(mix, read_manifest(mix), hub.HubOptions(**kw))
    assert [(r.repo_id, r.revision) for r in resolved] == [(None, None), ("org/no-dog", pinned)]
    mixed = du.UnlearningStack.from_pretrained("org/mix", **kw)
    assert mixed.names == ["no-cat", "no-dog"]
    assert_same_removal(mixed[1], dog)

    with pytest.raises(du.BaseModelMismatchError, match="base weights"):
        du.workflows.append("org/mix", removals.foreign, **kw)
    with pytest.raises(du.AdapterNameError, match="already holds"):
        du.workflows.append("org/mix", dog, **kw)
    assert [e["name"] for e in manifest_at(server, "org/mix")["entries"]] == ["no-cat", "no-dog"]


def test_tampered_weights_are_refused_before_the_pipeline_is_touched(server, kw, removals):
    du.UnlearningStack(removals.chain).push_to_hub("org/no-pets", **kw)
    good = server.head("org/no-pets")
    path = f"adapters/002-no-dog/{WEIGHTS_NAME}"
    data = bytearray(server.files("org/no-pets")[path])
    data[-1] ^= 1
    HfApi(**kw).create_commit(  # someone edits a weights file on the Hub without the manifest
        "org/no-pets", [CommitOperationAdd(path, bytes(data))], commit_message="edit"
    )
    with pytest.raises(du.AdapterFormatError, match=f"{path} does not match the sha256"):
        du.UnlearningStack.from_pretrained("org/no-pets", **kw)

    # a file changed in the local cache after download is refused too, offline
    folder = hub.download("org/no-pets", revision=good, **kw)
    assert len(du.UnlearningStack.from_pretrained("org/no-pets", revision=good, local_files_only=True, **kw)) == 3
    cached = (folder / "adapters" / "003-no-tree" / "unlearning_probes.safetensors").resolve()
    cached.write_bytes(cached.read_bytes()[:-1] + b" ")
    with pytest.raises(du.AdapterFormatError, match="003-no-tree/unlearning_probes.safetensors does not match"):
        du.UnlearningStack.from_pretrained("org/no-pets", revision=good, local_files_only=True, **kw)


def test_interrupted_downloads_are_resumed_and_verified(server, kw, removals, monkeypatch, tmp_path):
    """huggingface_hub resumes a cut transfer with a `Range` request; every file is verified after, so a resume that
    brings other bytes is refused, and a transfer that keeps failing raises a typed error and loads nothing."""
    from huggingface_hub import file_download

    monkeypatch.setattr(file_download.time, "sleep", lambda seconds: None)  # the client waits 1 s per retry
    # the client writes what it received in chunks of 10 MB and resumes after the last one; 1 KB chunks make
    # these 20 KB files behave like the large files of a real model
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    du.UnlearningStack(removals.chain).push_to_hub("org/no-pets", **kw)
    path = f"adapters/002-no-dog/{WEIGHTS_NAME}"
    server.cut_downloads[path] = 2  # the first two transfers of this file stop half way
    stack = du.UnlearningStack.from_pretrained("org/no-pets", **kw)
    resumed = [header for file, header in server.ranges if file == path]
    assert len(resumed) == 2 and all(header != "bytes=0-" for header in resumed)
    for pulled, made in zip(stack, removals.chain, strict=True):
        assert_same_removal(pulled, made)

    # the resumed part differs from what the first part belonged to (the file changed in between): refused
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "second-cache"))
    server.cut_downloads[path], server.corrupt_resumes = 1, {path}
    pipe = make_sd_pipeline()
    before = generate(pipe, PROMPT)
    with pytest.raises(du.AdapterFormatError, match=f"{path} does not match the sha256"):
        pipe.load_unlearning("org/no-pets", **kw)
    assert pipe.unlearning == () and (generate(pipe, PROMPT) == before).all()

    # a transfer that keeps failing: a typed error, no partial file left in the cache, and a later pull works
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "third-cache"))
    server.cut_downloads[path], server.corrupt_resumes = 100, set()
    with pytest.raises(du.DownloadError, match="failed part way"):
        pipe.load_unlearning("org/no-pets", **kw)
    assert pipe.unlearning == () and not list((tmp_path / "third-cache").rglob("*.incomplete"))
    server.cut_downloads[path] = 0
    pipe.load_unlearning("org/no-pets", **kw)
    assert np.allclose(generate(pipe, PROMPT), removals.image, atol=1e-5)


def test_cached_chain_loads_offline_and_an_uncached_one_says_what_to_do(server, kw, removals, tmp_path):
    du.UnlearningStack(removals.chain[:2]).push_to_hub("org/no-pets", **kw)
    du.UnlearningStack.from_pretrained("org/no-pets", **kw)  # fills the cache
    before = len(server.requests)
    assert du.UnlearningStack.from_pretrained("org/no-pets", local_files_only=True, **kw).names == ["no-cat", "no-dog"]
    assert len(server.requests) == before  # nothing asked of the Hub
    with pytest.raises(du.AdapterNotFoundError, match=r"local_files_only=True was passed.*hf download org/other"):
        du.UnlearningStack.from_pretrained("org/other", local_files_only=True, **kw)
    with pytest.raises(du.AdapterNotFoundError, match="No Hub repo 'org/other'"):
        du.UnlearningStack.from_pretrained("org/other", **kw)
    with pytest.raises(du.AdapterNotFoundError, match="has no revision 'v9'"):
        du.UnlearningStack.from_pretrained("org/no-pets", revision="v9", **kw)

    # HF_HUB_OFFLINE=1 in a fresh process (huggingface_hub reads it at import), no endpoint at all
    script = textwrap.dedent(
        """
        from diffusers_unlearn import UnlearningStack
        print(UnlearningStack.from_pretrained("org/no-pets").names)
        try:
            UnlearningStack.from_pretrained("org/other")
        except FileNotFoundError as error:
            print(type(error).__name__, error)
        """
    )
    package_root = str(Path(du.__file__).parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": constants.HF_HUB_CACHE, "HF_TOKEN": TOKEN}
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env.update(PYTHONPATH=path, HF_ENDPOINT="http://127.0.0.1:9", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['no-cat', 'no-dog']"
    assert lines[1].startswith("AdapterNotFoundError") and "HF_HUB_OFFLINE=1 is set" in lines[1]


def test_pull_from_a_hand_written_cache(removals, tmp_path):
    """The layout `huggingface_hub` writes (blobs, snapshots/<commit> of symlinks, refs/main), filled by hand from
    a folder `UnlearningStack.save_pretrained` wrote (its manifest pins the sha256 of every file)."""
    saved = du.UnlearningStack(removals.chain[:2]).save_pretrained(tmp_path / "saved")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--org--offline"
    for file in sorted(p for p in saved.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / sha256_file(file)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / file.relative_to(saved)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    stack = du.UnlearningStack.from_pretrained("org/offline", cache_dir=tmp_path / "cache", local_files_only=True)
    assert stack.names == ["no-cat", "no-dog"]
    assert hub.download("org/offline", cache_dir=tmp_path / "cache", local_files_only=True).name == commit
    with pytest.raises(du.AdapterNotFoundError, match="revision 'v1'"):
        du.UnlearningStack.from_pretrained(
            "org/offline", revision="v1", cache_dir=tmp_path / "cache", local_files_only=True
        )


def test_revoking_a_removal_is_a_new_commit_and_history_keeps_it(server, kw, removals, sd_pipe):
    cat, dog, tree = removals.chain
    before = du.UnlearningStack(removals.chain).push_to_hub("org/no-pets", **kw)
    old_cat = manifest_at(server, "org/no-pets")["entries"][0]
    du.workflows.remove("org/no-pets", "no-dog", pipe=sd_pipe, **kw)
    entries = manifest_at(server, "org/no-pets")["entries"]
    assert [e["name"] for e in entries] == ["no-cat", "no-tree"]
    assert entries[0] == old_cat  # untouched: not re-uploaded
    assert not any(p.startswith("adapters/002-no-dog") for p in server.files("org/no-pets"))
    stack = du.UnlearningStack.from_pretrained("org/no-pets", **kw)
    assert stack["no-tree"].metadata["resolved"]["withdrawn"] == "no-dog"  # re-solved without it
    assert du.UnlearningStack.from_pretrained("org/no-pets", revision=before.oid, **kw).names == [
        "no-cat",
        "no-dog",
        "no-tree",
    ]


def test_malformed_manifests_are_refused(tmp_path, removals):
    folder = du.UnlearningStack(removals.chain[:1]).save_pretrained(tmp_path / "chain")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    bad = [
        ({"path": "../../elsewhere"}, "stay inside its repo"),
        ({"repo_id": "org/x", "revision": "main"}, "must pin a commit"),
        ({"repo_id": "org/x"}, "needs both"),
        ({"sha256": "abc"}, "hex sha256"),
    ]
    for change, message in bad:
        broken = {**manifest, "entries": [{**manifest["entries"][0], **change}]}
        (folder / MANIFEST_NAME).write_text(json.dumps(broken))
        with pytest.raises(du.AdapterFormatError, match=message):
            du.UnlearningStack.from_pretrained(folder)
    with pytest.raises(du.AdapterNotFoundError, match="not a Hub repo id"):
        du.UnlearningStack.from_pretrained("no/such/folder")


# ---------------------------------------------------------------------------------------------------------
# Public methods: the same calls through `push_to_hub`, `from_pretrained("org/name")` and `load_unlearning`.
# ---------------------------------------------------------------------------------------------------------
def test_public_push_to_hub_and_from_pretrained(server, kw, removals):
    cat, dog, tree = removals.chain
    info = cat.push_to_hub("org/no-cat", commit_message="first removal", **kw)
    assert info.oid == server.head("org/no-cat")
    assert_same_removal(du.UnlearningAdapter.from_pretrained("org/no-cat", revision=info.oid, **kw), cat)

    du.UnlearningStack([cat, dog]).push_to_hub("org/no-pets", **kw)
    HfApi(**kw).create_tag("org/no-pets", tag="v1")
    du.workflows.append("org/no-pets", tree, **kw)
    assert du.UnlearningStack.from_pretrained("org/no-pets", revision="v1", **kw).names == ["no-cat", "no-dog"]
    assert du.UnlearningStack.from_pretrained("org/no-pets", **kw).names == ["no-cat", "no-dog", "no-tree"]
    with pytest.raises(du.AdapterNameError, match="chain of 3"):
        du.UnlearningAdapter.from_pretrained("org/no-pets", **kw)
    # a local folder whose manifest references another repo
    du.UnlearningStack([cat]).push_to_hub("org/mix", **kw)
    du.UnlearningStack([dog]).push_to_hub("org/no-dog", **kw)
    du.workflows.append("org/mix", "org/no-dog", **kw)
    local = hub.download("org/mix", **kw)
    assert du.UnlearningStack.from_pretrained(local, **kw).names == ["no-cat", "no-dog"]


def test_public_load_unlearning_from_a_repo_id(server, kw, removals):
    du.UnlearningStack(removals.chain).push_to_hub("org/no-pets", **kw)
    pipe = make_sd_pipeline()
    loaded = pipe.load_unlearning("org/no-pets", revision="main", **kw)
    assert [u.name for u in loaded] == ["no-cat", "no-dog", "no-tree"] and all(u.verified for u in loaded)
    assert np.allclose(generate(pipe, PROMPT), removals.image, atol=1e-5)
    pipe.unload_unlearning()
    with pytest.raises(du.AdapterNotFoundError, match="local_files_only=True was passed"):
        pipe.load_unlearning("org/never-pulled", local_files_only=True)

    path = f"adapters/003-no-tree/{WEIGHTS_NAME}"  # edited on the Hub without the manifest: refused, all or nothing
    data = server.files("org/no-pets")[path]
    HfApi(**kw).create_commit("org/no-pets", [CommitOperationAdd(path, data[:-1] + b" ")], commit_message="edit")
    pipe.load_unlearning(removals.chain[0])
    with pytest.raises(du.AdapterFormatError, match=f"{path} does not match the sha256"):
        pipe.load_unlearning("org/no-pets", adapter_name=None, **kw)
    assert [u.name for u in pipe.unlearning] == ["no-cat"]


def test_the_former_hub_functions_warn_and_still_work(server, kw, removals):
    """docs/hub.md promised these names; they stay as thin `FutureWarning` aliases of the calls that replaced them."""
    cat, dog, _ = removals.chain
    with pytest.warns(FutureWarning, match="hub.push_stack is deprecated"):
        hub.push_stack([cat], "org/old", **kw)
    with pytest.warns(FutureWarning, match="hub.append_to_hub is deprecated"):
        hub.append_to_hub("org/old", dog, **kw)
    with pytest.warns(FutureWarning, match="hub.load_stack is deprecated"):
        assert hub.load_stack("org/old", **kw).names == ["no-cat", "no-dog"]
    with pytest.warns(FutureWarning, match="hub.load is deprecated"):
        assert [a.name for a in hub.load("org/old", **kw)] == ["no-cat", "no-dog"]
    with pytest.warns(FutureWarning, match="hub.resolve_stack is deprecated"):
        resolved = hub.resolve_stack(hub.download("org/old", **kw), **kw)
    assert [r.entry["name"] for r in resolved] == ["no-cat", "no-dog"]
    with pytest.warns(FutureWarning, match="hub.push_adapter is deprecated"):
        hub.push_adapter(cat, "org/old-cat", **kw)
    with pytest.warns(FutureWarning, match="hub.load_adapter is deprecated"):
        assert_same_removal(hub.load_adapter("org/old-cat", **kw), cat)
    with pytest.warns(FutureWarning, match="hub.revoke is deprecated"):
        hub.revoke("org/old", "no-dog", **kw)
    assert du.UnlearningStack.from_pretrained("org/old", **kw).names == ["no-cat"]
    with pytest.raises(AttributeError):
        hub.no_such_function  # noqa: B018


def test_a_write_takes_its_branch_from_the_former_revision_argument_with_a_warning():
    from diffusers_unlearn.hub.options import write_options

    with pytest.warns(FutureWarning, match="pass `branch=`"):
        options, branch = write_options({"revision": "dev", "token": "t"}, None)
    assert (branch, options.revision, options.token) == ("dev", None, "t")
    options, branch = write_options({"token": "t"}, "main")  # no warning: nothing deprecated
    assert (branch, options.revision) == ("main", None)

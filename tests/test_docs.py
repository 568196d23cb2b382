"""Every shell block of README.md and docs/*.md is run or checked, so a doc change that breaks a command
fails here.

Each command of a ```bash / ```sh / ```console block (tests/doc_blocks.py cuts them) is classified below:
  run    run as written with bash in a sandbox folder outside the source tree (offline), exit 0 (quick)
  e2e    the same, in tests/e2e/test_docs_e2e.py (slow: training, a pipeline)
  check  needs a GPU, a cluster, a container runtime or the hub: run with bash, but the programs it starts
         (emotune, deepspeed, torchrun, docker, srun, apptainer) only record their arguments, which are then
         parsed by the program's own parser; `emotune launch` also runs its --dry-run (it validates the run
         config), `emotune train` and `pipeline` load their configs, `eval` / `watch` suite and task names
         must be shipped ones, containers and `bash -c` scripts are checked inside
  skip   cannot be checked here; the reason says why
Every block also passes `bash -n` and shellcheck. A command not in DOC_COMMANDS fails the test: a new or
edited doc command must be classified here (`python tests/test_docs.py --list` prints the classification
and what is missing).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_blocks as db  # noqa: E402
import doc_checks as dc  # noqa: E402

RUN, E2E, CHECK, SKIP = "run", "e2e", "check", "skip"
IMAGE = "the image is built and run by tests/e2e/test_image.py (podman, CPU torch); Docker and GPUs are not here"
DOCKER_RUN = ('docker run --rm --gpus {gpus} --user "$(id -u):$(id -g)" -v "$PWD/runs:/runs" '
              '-v "$HOME/.cache/emotune-docker:/cache" emotune ')
TORCHRUN_IN_SLURM = ("bash -c 'emotune launch /runs/cfg.yaml --launcher torchrun --nodes \"$SLURM_NNODES\" --procs-per-node 8 "
                     "--master-addr \"$MASTER_ADDR\" --node-rank \"$SLURM_NODEID\"'")

# command (whitespace runs as one space, comments dropped) -> (mode, note)
DOC_COMMANDS: dict[str, tuple[str, str]] = {
    # README.md
    "make demo": (SKIP, "creates .venv (pip) and runs the 10-minute demo; `emotune demo` is tests/e2e/test_demo.py"),
    "make test": (SKIP, "the whole suite, this test included: CI's own command (.ci/run)"),
    "docker build -t emotune .": (CHECK, "the build context; " + IMAGE),
    DOCKER_RUN.replace("{gpus}", "all --ipc=host") + "launch configs/train/llama7b-wikitext103-emo.yaml "
    "--procs-per-node 8 output_dir=/runs/llama7b-emo": (CHECK, "8 GPUs: the launch inside, dry run"),
    "srun --nodes 2 --ntasks-per-node 1 --gpus-per-node 8 --container-image=/shared/emotune.sqsh "
    "--container-mounts=/shared/runs:/runs,/shared/cache:/cache bash -c 'emotune launch /runs/cfg.yaml --launcher "
    "torchrun --nodes \"$SLURM_NNODES\" --procs-per-node 8 --node-rank \"$SLURM_NODEID\" --master-addr \"$(scontrol "
    "show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\"'": (CHECK, "pyxis + 2 GPU nodes: the launch inside, dry run"),
    # docs/cluster.md
    "emotune train configs/train/llama7b-wikitext103-emo.yaml": (CHECK, "a GPU and the hub's LLaMA-7B"),
    "emotune launch configs/train/llama7b-wikitext103-emo.yaml --procs-per-node 8": (CHECK, "8 GPUs: dry run"),
    "emotune launch CONFIG --nodes 2 --procs-per-node 8 --hostfile hosts": (CHECK, "2 nodes: dry run"),
    "emotune launch CONFIG --nodes 2 --procs-per-node 8 --hostfile hosts --node-rank 0": (CHECK, "2 nodes: dry run"),
    "emotune launch CONFIG --nodes 2 --procs-per-node 8 --hostfile hosts --node-rank 1": (CHECK, "2 nodes: dry run"),
    "emotune launch CONFIG --launcher torchrun --nodes 2 --procs-per-node 8 --master-addr node-001 "
    "--node-rank \"$NODE_RANK\"": (CHECK, "2 nodes: dry run"),
    "emotune launch CONFIG output_dir=runs/llama7b --nodes 2 --procs-per-node 8 --sbatch runs/llama7b/slurm "
    "--time 2-00:00:00 --partition gpu --account myproject --sbatch-arg=--qos=high "
    "--eval-command \"emotune watch runs/llama7b --suite paper --once\"": (
        RUN, "writes the two sbatch scripts; the eval job must watch the run's output_dir"),
    "emotune launch configs/train/tiny-cpu.yaml --procs-per-node 2 --timeout-minutes 60 --env NCCL_DEBUG=INFO "
    "output_dir=runs/probe --probe": (E2E, "starts 2 CPU ranks with the probe; each writes what it sees"),
    "jid=$(sbatch --parsable runs/llama7b/slurm/train.sbatch)": (
        SKIP, "a 2-node GPU SLURM cluster; tests/e2e/test_launch_slurm.py submits generated scripts to a real one-node cluster"),
    "sbatch --dependency=afterok:\"$jid\" runs/llama7b/slurm/eval.sbatch": (SKIP, "as the line before"),
    DOCKER_RUN.replace("{gpus}", "'\"device=0\"'") + "train /runs/cfg.yaml": (CHECK, "a GPU: the train inside, config loaded"),
    DOCKER_RUN.replace("{gpus}", "all --ipc=host") + "deepspeed --num_gpus 8 --module emotune train /runs/cfg.yaml": (
        CHECK, "8 GPUs: DeepSpeed's parser, then emotune's with the --local_rank it adds"),
    DOCKER_RUN.replace("{gpus}", "'\"device=0\"'") + "eval --model /runs/llama7b-emo/checkpoint-1000 --suite paper "
    "--out /runs/llama7b-emo/eval-1000": (CHECK, "a GPU, a 7B checkpoint and the hub's task data"),
    "docker run --rm --gpus all --ipc=host --network=host -v /shared/runs:/runs -v /shared/cache:/cache emotune launch "
    "/runs/cfg.yaml --nodes 2 --procs-per-node 8 --hostfile /runs/hosts --node-rank \"$NODE_RANK\"": (CHECK, "2 GPU nodes: dry run"),
    "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)": (RUN, "with SLURM's variables set"),
    "export MASTER_ADDR": (RUN, "with SLURM's variables set"),
    "srun --container-image=/shared/emotune.sqsh --container-mounts=/shared/runs:/runs,/shared/cache:/cache "
    + TORCHRUN_IN_SLURM: (CHECK, "pyxis + 2 GPU nodes: the launch inside, dry run"),
    "enroot import -o /shared/emotune.sqsh dockerd://emotune": (SKIP, "enroot and a Docker daemon are not here"),
    "sbatch train-container.sbatch": (SKIP, "a GPU SLURM cluster with pyxis; the script's lines are checked one by one"),
    "apptainer build /shared/emotune.sif docker-daemon://emotune:latest": (SKIP, "Apptainer and a Docker daemon are not here"),
    "srun apptainer exec --nv --bind /shared/runs:/runs,/shared/cache:/cache /shared/emotune.sif "
    + TORCHRUN_IN_SLURM: (CHECK, "Apptainer + 2 GPU nodes: the launch inside, dry run"),
    "docker/cpu-image.sh build": (SKIP, "9 minutes of podman build; " + IMAGE),
    "docker/cpu-image.sh run localhost/emotune:cpu --help": (SKIP, "needs the built image; " + IMAGE),
    "docker build --build-arg BASE_IMAGE=debian:bookworm --build-arg TORCH_SPEC=torch==2.13.0 --build-arg DS_BUILD_OPS=0 "
    "--build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu -t emotune:cpu .": (
        CHECK, "every --build-arg is an ARG of the Dockerfile; " + IMAGE),
    # docs/evaluation.md
    "emotune eval --model runs/emo-7b/checkpoint-2000 --suite paper --out results/emo-7b-2000": (
        CHECK, "a 7B checkpoint and the hub's task data"),
    "emotune eval --model PATH --tasks sst2,trec --out DIR data_dir=data/ scoring=continuation batch_size=16": (
        CHECK, "placeholders for a model and the tasks' data"),
    "emotune eval my_task.yaml --model PATH --out DIR limit=50": (CHECK, "placeholders for a task file and a model"),
    "emotune eval --evaluator lm_eval --model PATH --tasks arc_easy,harness_task.yaml --out DIR": (
        CHECK, "lm-evaluation-harness, the hub's arc_easy, a placeholder task file"),
    # docs/generation-eval.md
    "emotune eval --model CKPT --tasks generation-wikitext2,generation-ptb --out OUT limit=100": (
        CHECK, "the hub's corpora and gpt2-large"),
    "emotune eval --model CKPT --suite generation --out OUT": (CHECK, "the hub's corpora and gpt2-large"),
    # docs/instruct-eval.md
    "emotune eval --suite instruct --model runs/emo-7b/checkpoint-1200 --out results/emo-7b": (
        CHECK, "a 7B checkpoint and the hub's AlpacaEval set"),
    "emotune eval --suite instruct --model runs/emo-7b/checkpoint-1200 --against runs/mle-7b/checkpoint-1200 --judge "
    "GAIR/autoj-13b --judge-format autoj --out results/emo-vs-mle dtype=bfloat16": (CHECK, "7B checkpoints, Auto-J 13B"),
    "emotune eval --suite instruct --model CKPT --against results/mle-7b/alpaca_eval.outputs.json --judge "
    "WeOpenML/PandaLM-7B-v1 --judge-format pandalm --out DIR": (CHECK, "PandaLM 7B from the hub"),
    "emotune eval --suite instruct --model CKPT --against reference --judge JUDGE --out DIR": (CHECK, "placeholders"),
    "emotune judge results/emo-7b/alpaca_eval.outputs.json results/mle-7b/alpaca_eval.outputs.json --judge GAIR/autoj-13b "
    "--judge-format autoj --out results/autoj": (CHECK, "Auto-J 13B from the hub"),
    "emotune pipeline configs/pipelines/tiny-instruct.yaml": (E2E, "two tiny instruction-tuning runs + their responses"),
    "emotune eval --tasks configs/eval/tasks/tiny_instruct.yaml --model runs/tiny-instruct/emo/checkpoint-20 --against "
    "runs/tiny-instruct/mle/checkpoint-20 --judge runs/tiny-instruct/mle/checkpoint-20 --judge-format plain --out "
    "runs/tiny-instruct/judged": (E2E, "judges the pipeline's checkpoints, from a folder outside the source tree"),
    "emotune pipeline configs/pipelines/tiny-instruct.yaml run_dir=runs/tiny-instruct-2 'pairwise=[{a: emo, b: mle, judge: "
    "runs/tiny-instruct/mle/checkpoint-20, format: plain}]'": (
        CHECK, "trains both arms again (minutes); a pipeline with pairwise: runs in tests/e2e/test_instruct_pipeline.py"),
    "emotune eval --suite instruct --model runs/emo-7b/checkpoint-FINAL --out results/emo-7b dtype=bfloat16": (
        CHECK, "a 7B checkpoint and the hub's AlpacaEval set"),
    "emotune eval --suite instruct --model runs/mle-7b/checkpoint-FINAL --out results/mle-7b dtype=bfloat16": (
        CHECK, "a 7B checkpoint and the hub's AlpacaEval set"),
    "pip install alpaca-eval && export OPENAI_API_KEY=...": (SKIP, "installs a package and needs an OpenAI key"),
    "alpaca_eval --model_outputs results/emo-7b/alpaca_eval.outputs.json --annotators_config alpaca_eval_gpt4": (
        SKIP, "the official AlpacaEval with GPT-4 (OpenAI API)"),
    "alpaca_eval --model_outputs results/mle-7b/alpaca_eval.outputs.json --annotators_config alpaca_eval_gpt4": (
        SKIP, "the official AlpacaEval with GPT-4 (OpenAI API)"),
    "emotune judge results/emo-7b/alpaca_eval.outputs.json results/mle-7b/alpaca_eval.outputs.json --judge GAIR/autoj-13b "
    "--judge-format autoj --out results/fig3-autoj dtype=bfloat16 batch_size=8": (CHECK, "Auto-J 13B from the hub"),
    "emotune judge results/emo-7b/alpaca_eval.outputs.json results/mle-7b/alpaca_eval.outputs.json --judge "
    "WeOpenML/PandaLM-7B-v1 --judge-format pandalm --out results/fig3-pandalm dtype=bfloat16 batch_size=8": (
        CHECK, "PandaLM 7B from the hub"),
    "emotune report runs/emo-7b runs/mle-7b --out report/": (CHECK, "two 7B runs' results"),
    # docs/scheduling.md
    "emotune pipeline configs/pipelines/tiny.yaml": (CHECK, "minutes of CPU; the same pipeline runs in tests/e2e/test_pipeline_tiny.py"),
    "emotune pipeline configs/pipelines/tiny.yaml run_dir=runs/tiny-mle 'train.overrides=[objective.name=mle]'": (
        CHECK, "minutes of CPU; its merged overrides are checked in tests/test_pipeline_overrides.py"),
    "emotune watch runs/emo --suite icl": (CHECK, "a polling loop beside a running training job"),
    "emotune watch runs/emo --suite icl --follow": (CHECK, "a training job that is running"),
    "emotune watch runs/emo --suite icl --once": (CHECK, "a run folder and the hub's task data"),
    "emotune watch runs/emo --suite paper --runner slurm --after 123456 --sbatch-arg=--gres=gpu:1 --follow": (
        CHECK, "a GPU SLURM cluster"),
    "emotune results runs/emo": (CHECK, "a run folder with results"),
    "emotune results runs/emo --best --json": (CHECK, "a run folder with results"),
    "emotune report runs/mle runs/tailr runs/mixce runs/emo --out report/": (CHECK, "four runs' results"),
    "emotune report runs/demo/{mle,emo}-seed* --out report/ --headline synthetic_oracle/mauve --headline ppl_oracle": (
        CHECK, "the demo's six runs (the demo is tests/e2e/test_demo.py)"),
    "emotune watch runs/emo-7b --suite my-suite.yaml --devices 0,1,2,3,4,5,6,7 --follow": (CHECK, "8 GPUs"),
    "emotune watch runs/emo-7b --suite my-suite.yaml --runner slurm --sbatch-arg=--gres=gpu:1 --follow": (
        CHECK, "a GPU SLURM cluster"),
    # docs/training.md
    "emotune train configs/train/tiny-cpu.yaml": (E2E, "the tiny CPU run, timed"),
    "emotune train configs/train/tiny-cpu-chat.yaml": (CHECK, "the same run on conversations; tests/train/test_chat_train.py trains format: chat"),
    "deepspeed --num_gpus 8 --module emotune.launch.train_entry configs/train/llama7b-wikitext103-emo.yaml": (
        CHECK, "8 GPUs: DeepSpeed's parser, then emotune's with the --local_rank it adds"),
    "deepspeed --num_gpus 8 --module emotune train configs/train/llama7b-wikitext103-emo.yaml": (
        CHECK, "8 GPUs: DeepSpeed's parser, then emotune's with the --local_rank it puts before `train`"),
    "deepspeed --hostfile hosts --master_addr node-001 --module emotune.launch.train_entry CONFIG": (
        CHECK, "2 nodes over pdsh: DeepSpeed's parser, then emotune's"),
    "deepspeed --hostfile hosts --no_ssh --node_rank \"$NODE_RANK\" --master_addr node-001 --master_port 29500 --module "
    "emotune.launch.train_entry CONFIG": (CHECK, "2 nodes: DeepSpeed's parser, then emotune's"),
    "torchrun --nnodes 2 --nproc_per_node 8 --node_rank \"$NODE_RANK\" --master_addr node-001 -m emotune train CONFIG": (
        CHECK, "2 nodes: torchrun's parser, then emotune's"),
}

# shellcheck findings the docs keep on purpose: SC2016 ('$VAR' in single quotes) is how a `bash -c` script
# reaches the node that expands it.
SHELLCHECK_EXCLUDE = "SC2016"
# Variables a checked command sees: the docs' NODE_RANK placeholder, and a 2-node SLURM allocation.
CHECK_ENV = {"NODE_RANK": "0"}


def classify(command: db.Command) -> tuple[str, str] | None:
    return DOC_COMMANDS.get(command.key)


def listing() -> str:
    """Every doc command with its mode and reason (the closing note's list), then what is unclassified."""
    rows, missing = [], []
    for c in db.all_commands():
        entry = classify(c)
        if entry is None:
            missing.append(c)
        else:
            rows.append(f"{entry[0]:5}  {c.where:28}  {c.key[:110]}\n{'':36}{entry[1]}")
    counts = {m: sum(1 for c in db.all_commands() if (classify(c) or ("?",))[0] == m) for m in (RUN, E2E, CHECK, SKIP)}
    out = rows + [f"\n{len(rows)} commands: " + ", ".join(f"{n} {m}" for m, n in counts.items())]
    out += [f"UNCLASSIFIED {c.where}; add to DOC_COMMANDS:\n    {c.key!r}: (CHECK, \"why it cannot run here\")," for c in missing]
    return "\n".join(out)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return db.make_sandbox(tmp_path_factory.mktemp("docs"))


def test_extraction(tmp_path):
    """Continuations joined, comments dropped (not a `#` inside quotes), console prompts taken, output left out."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("x\n  ```bash\n  a --x 1 \\\n     --y '#2'  # note\n  # alone\n  b\n  ```\n")
    (tmp_path / "docs" / "d.md").write_text("```console\n$ c \\\n  d\nout # put\n$ e\n```\n```text\nf\n```\n")
    got = [(c.where, c.key) for c in db.all_commands(tmp_path)]
    assert got == [("README.md:3", "a --x 1 --y '#2'"), ("README.md:6", "b"), ("docs/d.md:2", "c d"), ("docs/d.md:5", "e")]


def test_every_fence_has_a_language():
    """An untagged fence could hide a command from this test: tag it `bash` (commands) or `text` (output, trees)."""
    bad = [f"{b.path}:{b.line}" for b in db.blocks() if b.lang not in db.SHELL + db.NOT_SHELL]
    assert not bad, f"fenced blocks with no known language: {bad}"


def test_every_command_is_classified():
    commands = db.all_commands()
    assert len(commands) > 50  # the extraction found the docs' commands
    missing = [f"{c.where}: {c.key!r}" for c in commands if classify(c) is None]
    assert not missing, ("doc commands not classified in tests/test_docs.py DOC_COMMANDS (run, e2e, check or skip "
                         "with a reason):\n" + "\n".join(missing))
    stale = set(DOC_COMMANDS) - {c.key for c in commands}
    assert not stale, f"DOC_COMMANDS entries no doc has any more: {sorted(stale)}"
    assert all(mode in (RUN, E2E, CHECK, SKIP) and note for mode, note in DOC_COMMANDS.values())


@pytest.mark.parametrize("block", db.shell_blocks(), ids=lambda b: f"{b.path}:{b.line}")
def test_block_is_valid_bash(block):
    assert db.bash_n(block) is None, db.bash_n(block)
    from system_programs import require

    require([] if db.shellcheck_available() else ["shellcheck"], "the docs' shellcheck")
    problem = db.shellcheck(block, exclude=SHELLCHECK_EXCLUDE)
    assert problem is None, f"{block.path}:{block.line}: shellcheck (line 1 is an added #!/bin/bash):\n{problem}"


def _commands(mode):
    return [c for c in db.all_commands() if (classify(c) or ("",))[0] == mode]


@pytest.mark.parametrize("command", _commands(CHECK), ids=lambda c: c.where)
def test_checked_command(command, sandbox):
    rc, err, calls = dc.captured_calls(command.key, sandbox, db.sandbox_env(CHECK_ENV))
    assert rc == 0, f"{command.where}: bash exit {rc}: {err}"
    assert calls, f"{command.where}: started nothing that can be checked; classify it as run or skip"
    for call in calls:
        problem = dc.check_call(call, sandbox, db.sandbox_env(CHECK_ENV))
        assert problem is None, f"{command.where}: {problem}"


@pytest.mark.parametrize("command", _commands(RUN), ids=lambda c: c.where)
def test_run_command(command, sandbox):
    env = db.sandbox_env({**CHECK_ENV, **db.SLURM_ENV, "PATH": f"{sandbox / 'bin'}:{db.sandbox_env()['PATH']}"})
    proc = db.run_bash(command.key, sandbox, env, timeout=120)
    assert proc.returncode == 0, f"{command.where}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    dc.after_run(command, sandbox)


@pytest.mark.parametrize("block", [b for b in db.blocks() if b.lang in ("python", "yaml", "json")],
                         ids=lambda b: f"{b.path}:{b.line}")
def test_other_blocks_parse(block):
    """Python snippets are valid Python whose `from emotune... import X` names exist; YAML and JSON (or JSON
    Lines) blocks load. They use placeholders (model, batch), so they are not run."""
    import ast
    import importlib
    import json

    import yaml

    if block.lang == "yaml":
        yaml.safe_load(block.text)
    elif block.lang == "json":
        try:
            json.loads(block.text)
        except json.JSONDecodeError:
            [json.loads(line) for line in block.text.splitlines() if line.strip()]
    else:
        for node in ast.walk(ast.parse(block.text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emotune"):
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{block.path}:{block.line}: {node.module} has no {missing}"


# Forms the docs had before they were tested: each must fail its check (the checks are not vacuous).
STALE_FORMS = {
    "emotune eval --suite instruct --model M --against A --judge J --judge-format plain --out D "
    "data_dir=emotune/configs/eval/tasks/data/tiny_instruct": "inside the source tree",
    "emotune results runs/emo [--json] [--best]": "unrecognized arguments",
    "deepspeed --hostfile hosts --no_ssh --node_rank R --master_addr node-001 --module emotune.launch.train_entry CONFIG":
        "deepspeed rejects",
    "torchrun --nnodes 2 --nproc_per_node 8 --node_rank R --master_addr node-001 -m emotune train CONFIG": "torchrun rejects",
    "emotune launch CONFIG --launcher torchrun --nodes 2 --procs-per-node 8 --master-addr node-001 --node-rank R":
        "invalid int value",
    "emotune train configs/train/no-such-recipe.yaml": "not found",
    "emotune eval --model M --suite generations --out D": "generations",
    "emotune pipeline configs/pipelines/tiny.yaml 'train.overrides=[objective.name=nonsense]'": "objective",
    "emotune eval --model M --tasks sst2,trec,sst5 --out D": "sst5",
    "emotune train CONFIG objective.name=nonsense": "objective",
    "docker build --build-arg NO_SUCH_ARG=1 -t emotune .": "declares no such ARG",
    "docker run --rm -v \"$PWD/runs:/runs\" emotune eval --suite paper --out /runs/x": "--model",
    "srun bash -c 'emotune launch /runs/cfg.yaml --nodes \"$SLURM_NNODES\" --procs-per-node 8 --hostfile nowhere'": "nowhere",
}


@pytest.mark.parametrize("text", STALE_FORMS, ids=range(len(STALE_FORMS)))
def test_checks_catch_stale_forms(text, sandbox):
    command = db.Command(db.Block("stale.md", 1, "bash", text + "\n"), 2, text)
    rc, err, calls = dc.captured_calls(command.key, sandbox, db.sandbox_env(CHECK_ENV))
    problems = [dc.check_call(call, sandbox, db.sandbox_env(CHECK_ENV)) for call in calls]
    found = [p for p in problems if p]
    assert found and STALE_FORMS[text] in found[0], (text, problems)


def test_slurm_eval_job_must_watch_the_trained_folder(sandbox):
    """The SLURM example once trained into the config's output_dir and watched runs/llama7b: exit 0, nothing evaluated."""
    text = ("emotune launch CONFIG --nodes 2 --procs-per-node 8 --sbatch runs/stale/slurm "
            "--eval-command \"emotune watch runs/llama7b --suite paper --once\"")
    assert db.run_bash(text, sandbox, db.sandbox_env(), timeout=120).returncode == 0
    with pytest.raises(AssertionError, match="it would evaluate nothing"):
        dc.after_run(db.Command(db.Block("stale.md", 1, "bash", text), 2, text), sandbox)


def test_memory_table_is_deepspeeds_estimate():
    """docs/cluster.md's ZeRO-3 table = DeepSpeed's estimate_zero3_model_states_mem_needs for LLaMA-7B / 13B."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as estimate

    # LLaMA-1/2 shapes: vocabulary, hidden, layers, MLP width; embedding and LM head untied.
    shapes = {"7B": (32000, 4096, 32, 11008), "13B": (32000, 5120, 40, 13824)}
    text = (db.REPO / "docs" / "cluster.md").read_text()
    rows = re.findall(r"^\| (7B|13B)[^|]*\| (\d) × 8 \| ([\d.]+) GiB \| ([\d.]+) GiB / (\d+) GiB \| ([\d.]+) GiB / (\d+) GiB \|$",
                      text, re.M)
    assert len(rows) == 4, "the memory table's rows changed shape"
    for model, nodes, *cells in rows:
        vocab, h, layers, ffn = shapes[model]
        params = 2 * vocab * h + layers * (4 * h * h + 3 * h * ffn + 2 * h) + h
        want = []
        for offload, offload_params in ((False, False), (True, False), (True, True)):
            cpu, gpu, _ = estimate(params, vocab * h, 8, int(nodes), cpu_offload=offload, cpu_offload_params=offload_params)
            want += [f"{gpu / 2**30:.1f}"] + ([f"{cpu / 2**30:.0f}"] if offload else [])
        assert list(cells) == want, f"{model} on {nodes} × 8: the table says {cells}, DeepSpeed's estimator {want}"
    assert "6.74B params" in text and "13.02B params" in text


if __name__ == "__main__":
    if sys.argv[1:] == ["--list"]:
        print(listing())
    else:
        print("usage: python tests/test_docs.py --list")

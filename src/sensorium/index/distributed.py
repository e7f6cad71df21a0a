"""`sensorium index --ray`: the same pipeline on Ray Data, for collections that outgrow one machine.

The driver plans as a local run does (manifest first: a resumed run only sends what is missing), then hands the
files to Ray as items, paths only: each actor of an actor pool loads the models once and runs the local pipeline
(decoding in its own threads, frames of several files per forward pass) over a batch of files; no frame goes
through the object store. Results come back per file (its manifest record and rows) and the driver commits them
with the local protocol, under the collection's lock, so the tables are the same as a local run's and a killed
run resumes the same way. Models named by catalog name, hub id or path are loaded by each actor from its own
node's cache; models given as objects are shipped once through the object store. Actors use a GPU each when the
cluster has them (bf16 there, as `load` picks).
"""

from __future__ import annotations

import pickle

ACTOR_START_SECONDS = 600  # how long the actor pool may take to start (model loads included) before the run fails
FILES_PER_TASK = 8  # files an actor takes at a time: enough to share forward passes, small enough to balance


class EmbedFiles:
    """A Ray Data actor: models loaded once, then the pipeline over each batch of files."""

    def __init__(self, models, options: bytes, spaces: bytes, batch_size: int, workers: int,
                 sound_missing: str | None):
        import ray
        import torch

        from sensorium.index.spaces import Models

        loaded = {kind: ray.get(ref) for kind, ref in models.items()}
        device, dtype = "cpu", None
        if torch.cuda.is_available():  # the actor's GPU: bf16 there, as `load` picks
            device, dtype = "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            loaded = {kind: model.to(device=device, dtype=dtype) for kind, model in loaded.items()}
        self.models = Models(loaded.get("image"), loaded.get("audio"), device, dtype)
        self.models._loaded.update(loaded)
        self.options, self.spaces = pickle.loads(options), pickle.loads(spaces)
        self.batch_size, self.workers, self.sound_missing = batch_size, workers, sound_missing

    def __call__(self, batch: dict) -> dict:
        import ray

        from sensorium.index.pipeline import FileWork, Pipeline
        from sensorium.tasks.inputs import MediaItem

        works = [FileWork(MediaItem(str(p), str(m)), str(a), (int(s), int(t)), pickle.loads(policy))
                 for p, m, a, s, t, policy in zip(batch["item"], batch["modality"], batch["path"], batch["size"],
                                                  batch["mtime_ns"], batch["policy"])]
        pipeline = Pipeline(self.models, self.options, self.spaces, self.batch_size, self.workers, self.sound_missing)
        results = [pickle.dumps(result) for result in pipeline.run(works)]
        node = ray.get_runtime_context().get_node_id()
        return {"n": batch["n"], "result": results, "node": [node] * len(results)}


def run_on_ray(indexer, works, spaces, address: str):
    """(item, (record, rows)) per file, in the order Ray finishes them."""
    import ray

    from sensorium.tasks.visual import default_workers

    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, ignore_reinit_error=True, log_to_driver=False,
                 configure_logging=False)
    # the driver loads the models the spaces need, shipped once through the object store
    kinds = [kind for kind, space in (("image", "image"), ("audio", "sound")) if space in spaces]
    models = {kind: ray.put(indexer.models.get(kind)) for kind in kinds}
    gpus = ray.cluster_resources().get("GPU", 0)
    actors = max(1, int(gpus) if gpus else min(len(works), int(ray.cluster_resources().get("CPU", 1))))
    items = [{"n": n, "item": w.item.path, "modality": w.item.modality, "path": w.path, "size": w.stat[0],
              "mtime_ns": w.stat[1], "policy": pickle.dumps(w.policy)} for n, w in enumerate(works)]
    workers = default_workers() if indexer.workers is None else indexer.workers
    # every actor up before the first block is handed out: otherwise the first one to load its models takes
    # block after block while the others start, and a small run lands on one node
    ray.data.DataContext.get_current().wait_for_min_actors_s = ACTOR_START_SECONDS
    # at least one block per actor, so that a small run still spreads over the cluster
    per_task = max(1, min(FILES_PER_TASK, -(-len(items) // (2 * actors))))
    blocks = max(1, -(-len(items) // per_task))
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        EmbedFiles,
        fn_constructor_kwargs={
            "models": models,
            "options": pickle.dumps(indexer.options), "spaces": pickle.dumps(spaces),
            "batch_size": indexer.batch_size, "workers": workers, "sound_missing": indexer.sound_missing},
        batch_size=per_task, num_gpus=1 if gpus else 0, num_cpus=1 if not gpus else None,
        # one batch at a time per actor (an actor that started first must not queue every block), spread
        compute=ray.data.ActorPoolStrategy(min_size=actors, max_size=actors, max_tasks_in_flight_per_actor=1),
        scheduling_strategy="SPREAD",
        batch_format="numpy")
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for n, result, node in zip(batch["n"], batch["result"], batch["node"]):
            indexer.ray_nodes.add(str(node))
            yield works[int(n)].item, pickle.loads(result)

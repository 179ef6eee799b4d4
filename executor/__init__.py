"""schedule -> a run (docs/design.md §4).

- ``hooks``: ``apply_parastep`` / ``remove_parastep`` on an unmodified diffusers pipeline (the mechanism)
- ``exchange``: ``LocalExchange`` (one process plays every rank) and ``DistExchange`` (torch.distributed)
- ``launch``: spawn the world or join torchrun's; one-line failure reporting
- ``command``: ``parastep exec``; ``execute``: its ranks' run (report.json, images, --reference)
- ``inputs``: what a pipeline is called with; ``pipeline``: the pipeline found, checked and loaded
- ``evaluate``: a schedule's quality on one device; ``results``: what exec and evaluate write
- ``metrics``: PSNR and SSIM
- ``registry``: model names -> pipelines, loaded offline

Nothing is imported here, so ``import parastep.executor.registry`` stays cheap.
"""

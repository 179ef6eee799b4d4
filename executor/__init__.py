"""schedule -> a run (DESIGN §4).

- ``hooks``: ``apply_parastep`` / ``remove_parastep`` on an unmodified diffusers pipeline (the mechanism)
- ``exchange``: ``LocalExchange`` (one process plays every rank) and ``DistExchange`` (torch.distributed)
- ``launch``: spawn the world or join torchrun's; one-line failure reporting
- ``command``: ``parastep exec`` (report.json, images, --reference)
- ``metrics``: PSNR and SSIM
- ``registry``: model names -> pipelines, loaded offline

Nothing is imported here, so ``import parastep.executor.registry`` stays cheap.
"""

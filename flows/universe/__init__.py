"""One night over a universe of tickers: the `nightly-universe` flow, the batches it fans out to a
Prefect work pool (or runs in this process), and the deployments and workers that carry them."""

// The copy-out core: O_DIRECT aligned reads, zero detection, sparse writes, digests, progress.

// The dm-era metadata reader: superblock, writesets and era array into changed ranges.

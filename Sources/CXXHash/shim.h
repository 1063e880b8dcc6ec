#pragma once
// Debian's libxxhash (libxxhash-dev): XXH3, the block digest of images and manifests.
#include <xxhash.h>

// The two persistent-data structures dm-era builds its metadata from (drivers/md/persistent-data
// in the kernel), read-only and checked as they are walked:
//
// btree node (dm-btree-internal.h), one 4 KiB block:
//     0 csum u32   4 flags u32 (1 internal, 2 leaf)   8 blocknr u64
//    16 nr_entries u32   20 max_entries u32   24 value_size u32   28 padding u32
//    32 keys: max_entries × le64, then values: max_entries × value_size
// An internal node's values are le64 child blocks; child i holds the keys from keys[i] up to
// (not including) keys[i + 1].
//
// dm-array (dm-array.c): a one-level btree from block index to an array block:
//     0 csum u32   4 max_entries u32   8 nr_entries u32   12 value_size u32   16 blocknr u64
//    24 values: nr_entries × value_size
// Index i lives in array block i / max_entries. One array block may be the value of many
// indexes (a resize fills with one shared block), so array blocks may repeat; btree nodes may not.

/// The deepest tree accepted. A btree of 4 KiB nodes over 2^32 keys is at most a few levels
/// deep; anything deeper is a corrupt tree that could otherwise recurse without end.
private let maximumDepth = 16

private let nodeHeaderSize = 32
private let arrayHeaderSize = 24

extension MetadataDevice {
    /// Visits every leaf entry of the btree at `root` in key order, with the leaf block and the
    /// byte offset of the entry's value in it. Each node's checksum, location, flags, sizes and
    /// key order are checked, and keys must lie in the range their parent gives them.
    func walkBTree(root: UInt64, _ structure: EraStructure, valueSize: Int,
                   _ visit: (_ key: UInt64, _ leaf: MetadataBlock, _ valueOffset: Int) throws(EraMetadataError) -> Void)
    throws(EraMetadataError) {
        var seen = Set<UInt64>()
        try walkNode(root, structure, valueSize: valueSize, keys: 0..<UInt64.max, isRoot: true, depth: 0,
                     seen: &seen, visit)
    }

    private func walkNode(_ location: UInt64, _ structure: EraStructure, valueSize: Int, keys allowed: Range<UInt64>,
                          isRoot: Bool, depth: Int, seen: inout Set<UInt64>,
                          _ visit: (UInt64, MetadataBlock, Int) throws(EraMetadataError) -> Void)
    throws(EraMetadataError) {
        func malformed(_ detail: String) -> EraMetadataError {
            EraMetadataError(path: path, reason: .malformed(structure, block: location, detail))
        }
        guard seen.insert(location).inserted else {
            throw EraMetadataError(path: path, reason: .loop(structure, block: location))
        }
        guard depth < maximumDepth else { throw malformed("the tree is deeper than \(maximumDepth) levels") }
        let node = try read(location, as: structure)
        let computed = node.computedChecksum(.btreeNode)
        guard computed == node.storedChecksum else {
            throw EraMetadataError(path: path, reason: .checksumMismatch(
                structure, block: location, stored: node.storedChecksum, computed: computed))
        }
        let recorded = node.u64(8)
        guard recorded == location else {
            throw EraMetadataError(path: path, reason: .wrongLocation(structure, block: location, recorded: recorded))
        }
        let flags = node.u32(4)
        let isLeaf: Bool
        switch flags {
        case 1: isLeaf = false
        case 2: isLeaf = true
        default: throw malformed("node flags \(flags) are neither internal (1) nor leaf (2)")
        }
        let count = Int(node.u32(16)), capacity = Int(node.u32(20)), storedValueSize = Int(node.u32(24))
        let expectedValueSize = isLeaf ? valueSize : 8
        guard storedValueSize == expectedValueSize else {
            throw malformed("value size \(storedValueSize) where \(expectedValueSize) was expected")
        }
        guard capacity > 0, nodeHeaderSize + capacity * (8 + storedValueSize) <= metadataBlockSize else {
            throw malformed("room for \(capacity) entries of \(storedValueSize) bytes does not fit in a block")
        }
        guard count <= capacity else { throw malformed("\(count) entries in a node with room for \(capacity)") }
        // Only a leaf root may be empty (an empty tree); an internal node always has children.
        guard count > 0 || (isLeaf && isRoot) else { throw malformed("an empty non-root node") }

        let valueBase = nodeHeaderSize + capacity * 8
        var previous: UInt64?
        for index in 0..<count {
            let key = node.u64(nodeHeaderSize + index * 8)
            if let previous, key <= previous {
                throw malformed("key \(key) at entry \(index) does not follow \(previous)")
            }
            guard allowed.contains(key) else {
                throw malformed("key \(key) lies outside the range \(allowed.lowerBound)..<\(allowed.upperBound) its parent gives")
            }
            previous = key
        }
        for index in 0..<count {
            let key = node.u64(nodeHeaderSize + index * 8)
            if isLeaf {
                try visit(key, node, valueBase + index * storedValueSize)
            } else {
                let upper = index + 1 < count ? node.u64(nodeHeaderSize + (index + 1) * 8) : allowed.upperBound
                try walkNode(node.u64(valueBase + index * 8), structure, valueSize: valueSize, keys: key..<upper,
                             isRoot: false, depth: depth + 1, seen: &seen, visit)
            }
        }
    }

    /// Visits the array blocks of the dm-array at `root` in index order, with the index of each
    /// block's first entry and its entry count; the array must hold exactly `length` entries of
    /// `valueSize` bytes, which start at byte `arrayValuesOffset` of the block.
    func walkArray(root: UInt64, tree: EraStructure, blocks: EraStructure, valueSize: Int, length: UInt64,
                   _ visit: (_ firstIndex: UInt64, _ block: MetadataBlock, _ count: Int) throws(EraMetadataError) -> Void)
    throws(EraMetadataError) {
        var nextBlockIndex: UInt64 = 0
        var nextEntry: UInt64 = 0
        var entriesPerBlock: Int?
        var checked = Set<UInt64>()
        var previous: MetadataBlock?
        try walkBTree(root: root, tree, valueSize: 8) { (key, leaf, offset) throws(EraMetadataError) in
            guard key == nextBlockIndex else {
                throw EraMetadataError(path: path, reason: .malformed(
                    tree, block: leaf.location, "array block \(nextBlockIndex) is missing (the next index is \(key))"))
            }
            let location = leaf.u64(offset)
            // A resize inserts one shared block for a run of consecutive indexes: on a large,
            // mostly untouched array most indexes are the block just read.
            let block: MetadataBlock
            if let previous, previous.location == location {
                block = previous
            } else {
                block = try read(location, as: blocks)
            }
            previous = block
            func malformed(_ detail: String) -> EraMetadataError {
                EraMetadataError(path: path, reason: .malformed(blocks, block: location, detail))
            }
            let capacity = Int(block.u32(4)), count = Int(block.u32(8)), storedValueSize = Int(block.u32(12))
            // A block shared by several indexes is checked once.
            if checked.insert(location).inserted {
                let computed = block.computedChecksum(.arrayBlock)
                guard computed == block.storedChecksum else {
                    throw EraMetadataError(path: path, reason: .checksumMismatch(
                        blocks, block: location, stored: block.storedChecksum, computed: computed))
                }
                let recorded = block.u64(16)
                guard recorded == location else {
                    throw EraMetadataError(path: path, reason: .wrongLocation(blocks, block: location, recorded: recorded))
                }
                guard storedValueSize == valueSize else {
                    throw malformed("value size \(storedValueSize) where \(valueSize) was expected")
                }
                guard capacity > 0, arrayHeaderSize + capacity * valueSize <= metadataBlockSize else {
                    throw malformed("room for \(capacity) entries of \(valueSize) bytes does not fit in a block")
                }
                guard count <= capacity else { throw malformed("\(count) entries in a block with room for \(capacity)") }
            }
            // Every block of one array has the same capacity, and all but the last are full:
            // that is what lets index i be found in block i / capacity.
            if let entriesPerBlock, entriesPerBlock != capacity {
                throw malformed("room for \(capacity) entries where the array's other blocks have \(entriesPerBlock)")
            }
            entriesPerBlock = capacity
            guard nextEntry == key * UInt64(capacity) else {
                throw malformed("array block \(key) follows a block that is not full")
            }
            guard count > 0, nextEntry + UInt64(count) <= length else {
                throw malformed("array block \(key) holds \(count) entries; the array has \(length)")
            }
            try visit(nextEntry, block, count)
            nextEntry += UInt64(count)
            nextBlockIndex += 1
        }
        guard nextEntry == length else {
            throw EraMetadataError(path: path, reason: .malformed(
                tree, block: root, "the array holds \(nextEntry) entries; \(length) were expected"))
        }
    }
}

/// Where an array block's values begin.
let arrayValuesOffset = arrayHeaderSize

/// The most 32-bit era entries one array block holds: the era array can describe at most this
/// many data blocks per metadata block.
let arrayEntriesPerBlock = (metadataBlockSize - arrayHeaderSize) / 4

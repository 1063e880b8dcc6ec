/// Whether every byte of `bytes` is zero.
///
/// Reads 64 bytes per step as eight 64-bit words OR-ed together and stops at the first step
/// that is not zero, so data blocks cost a few nanoseconds and zero blocks one pass at memory
/// speed. The words are read unaligned-safe (`loadUnaligned`), so any start address works.
@inline(__always)
public func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    guard let base = bytes.baseAddress else { return true }
    let count = bytes.count
    var position = 0
    // Test the first word alone: data blocks almost always differ from zero right at the start.
    if count >= 8 && base.loadUnaligned(as: UInt64.self) != 0 { return false }
    while position + 64 <= count {
        let p = base + position
        let any = p.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
            | p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            | p.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
            | p.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
            | p.loadUnaligned(fromByteOffset: 32, as: UInt64.self)
            | p.loadUnaligned(fromByteOffset: 40, as: UInt64.self)
            | p.loadUnaligned(fromByteOffset: 48, as: UInt64.self)
            | p.loadUnaligned(fromByteOffset: 56, as: UInt64.self)
        if any != 0 { return false }
        position += 64
    }
    while position + 8 <= count {
        if base.loadUnaligned(fromByteOffset: position, as: UInt64.self) != 0 { return false }
        position += 8
    }
    while position < count {
        if base.load(fromByteOffset: position, as: UInt8.self) != 0 { return false }
        position += 1
    }
    return true
}

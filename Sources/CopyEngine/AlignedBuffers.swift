#if canImport(Glibc)
import Glibc
#endif

/// `count` buffers of `size` bytes each, in one allocation aligned to `alignment` (O_DIRECT
/// needs the address, the length and the file offset aligned to the device's logical block
/// size). Zero-filled at allocation when asked (a zero source); the engine's pool is not, as
/// it hands out only bytes a read has just filled. Freed in deinit; a pointer exists only
/// inside `with…`.
struct AlignedBuffers: ~Copyable {
    let count: Int
    let size: Int
    let alignment: Int
    private let base: UnsafeMutableRawPointer

    /// Aligns to at least the page size: cheap, and it keeps buffers off shared cache lines.
    init(count: Int, size: Int, alignment: Int, zeroed: Bool = true) {
        precondition(count > 0 && size > 0, "empty buffer pool")
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
        precondition(size % alignment == 0, "buffer size must be a multiple of the alignment")
        self.count = count
        self.size = size
        self.alignment = max(alignment, 4096)
        var memory: UnsafeMutableRawPointer?
        let status = posix_memalign(&memory, self.alignment, count * size)
        // Out of memory for a bounded, small pool is not something a caller can handle.
        guard status == 0, let memory else { fatalError("posix_memalign(\(count * size)) failed: \(status)") }
        if zeroed { memset(memory, 0, count * size) }
        self.base = memory
    }

    deinit { free(base) }

    /// Total bytes owned.
    var byteCount: Int { count * size }

    /// Buffer `index`, valid only inside `body`; the pointer must not escape.
    func withBuffer<R, E: Error>(_ index: Int, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        precondition(index >= 0 && index < count, "buffer index out of range")
        return try body(UnsafeMutableRawBufferPointer(start: base + index * size, count: size))
    }
}

/// The pool of a running copy, shared by its reader threads and the thread that writes.
/// Each buffer belongs to exactly one thread at a time: the pipeline hands its index over under
/// a lock, and that lock's ordering makes the bytes written by one thread visible to the next.
final class SharedBuffers: @unchecked Sendable {
    let buffers: AlignedBuffers

    init(count: Int, size: Int, alignment: Int) {
        buffers = AlignedBuffers(count: count, size: size, alignment: alignment, zeroed: false)
    }

    func withBuffer<R, E: Error>(_ index: Int, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try buffers.withBuffer(index, body)
    }
}

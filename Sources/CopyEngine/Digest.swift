import CXXHash

/// An XXH3-128 digest (libxxhash's `XXH3_128bits`), the checksum of every block snapstack copies.
///
/// Its text and byte forms are xxHash's canonical form (`XXH128_canonicalFromHash`): 16 bytes,
/// big-endian, high half first — the same 32 hex digits `xxhsum -H2` prints.
public struct Digest128: Hashable, Sendable, CustomStringConvertible {
    public var high64: UInt64
    public var low64: UInt64

    public init(high64: UInt64, low64: UInt64) {
        self.high64 = high64
        self.low64 = low64
    }

    /// `XXH3_128bits` of `bytes`.
    public static func of(_ bytes: UnsafeRawBufferPointer) -> Digest128 {
        let hash = XXH3_128bits(bytes.baseAddress, bytes.count)
        return Digest128(high64: hash.high64, low64: hash.low64)
    }

    /// `XXH3_128bits` of `bytes`.
    public static func of(_ bytes: some Sequence<UInt8>) -> Digest128 {
        let array = Array(bytes)
        return array.withUnsafeBytes { of($0) }
    }

    /// Reads 32 hex digits (either case) in canonical order; nil for anything else.
    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 32 else { return nil }
        var value: [UInt64] = [0, 0]
        for (index, character) in utf8.enumerated() {
            let nibble: UInt8
            switch character {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = character - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = character - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = character - UInt8(ascii: "A") + 10
            default: return nil
            }
            value[index / 16] = value[index / 16] << 4 | UInt64(nibble)
        }
        self.init(high64: value[0], low64: value[1])
    }

    /// The canonical 32 lowercase hex digits.
    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8](repeating: 0, count: 32)
        for (half, word) in [high64, low64].enumerated() {
            for nibble in 0..<16 {
                text[half * 16 + nibble] = digits[Int((word >> UInt64(60 - 4 * nibble)) & 0xf)]
            }
        }
        return String(decoding: text, as: UTF8.self)
    }

    public var description: String { hex }

    /// The size of the canonical byte form.
    public static let byteCount = 16

    /// Writes the canonical form (`XXH128_canonicalFromHash`) into the first 16 bytes of `destination`.
    public func writeCanonical(to destination: UnsafeMutableRawBufferPointer) {
        precondition(destination.count >= Digest128.byteCount, "a canonical XXH128 digest needs 16 bytes")
        var canonical = XXH128_canonical_t()
        XXH128_canonicalFromHash(&canonical, XXH128_hash_t(low64: low64, high64: high64))
        withUnsafeBytes(of: &canonical) { destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(16))) }
    }

    /// The canonical form as 16 bytes.
    public var canonicalBytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Digest128.byteCount)
        bytes.withUnsafeMutableBytes { writeCanonical(to: $0) }
        return bytes
    }

    /// Reads the canonical form (`XXH128_hashFromCanonical`) from the first 16 bytes of `source`.
    public init(canonical source: UnsafeRawBufferPointer) {
        precondition(source.count >= Digest128.byteCount, "a canonical XXH128 digest needs 16 bytes")
        var canonical = XXH128_canonical_t()
        withUnsafeMutableBytes(of: &canonical) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: source.prefix(16))) }
        let hash = XXH128_hashFromCanonical(&canonical)
        self.init(high64: hash.high64, low64: hash.low64)
    }
}

import BlockIO

/// The shape of an image or a delta stream: its block size and its device's size in bytes.
///
/// Both numbers come from files and streams that someone else wrote, and both end up in sums,
/// allocations and `off_t` conversions. Every reader checks them here first, so that a hostile
/// header is an error rather than a trap: once these bounds hold, `blockCount * 16` (a
/// checksum file), `deviceSize + blockSize` and `off_t(deviceSize)` cannot overflow.
public struct BlockGeometry: Hashable, Sendable {
    /// A block becomes one copy buffer; 64 MiB bounds what a header can make us allocate.
    public static let maximumBlockSize = 64 << 20
    /// The largest size a file or a block device can have on Linux (`off_t`).
    public static let maximumDeviceSize = UInt64(Int64.max)

    public let blockSize: Int
    public let deviceSize: UInt64

    /// Checks the bounds; the error says which one failed, for the caller to place in its message.
    public init(blockSize: Int, deviceSize: UInt64) throws(GeometryError) {
        guard blockSize >= 512, blockSize % 512 == 0, blockSize <= Self.maximumBlockSize else {
            throw GeometryError(description: "block size \(blockSize) is not a multiple of 512 up to 64 MiB")
        }
        guard deviceSize <= Self.maximumDeviceSize else {
            throw GeometryError(description: "device size \(deviceSize) is past the largest a device can have (\(Self.maximumDeviceSize))")
        }
        self.blockSize = blockSize
        self.deviceSize = deviceSize
    }

    /// Blocks covering the device, the last one possibly short.
    public var blockCount: UInt64 { Self.blockCount(deviceSize: deviceSize, blockSize: blockSize) }

    /// Without overflow for any size.
    public static func blockCount(deviceSize: UInt64, blockSize: Int) -> UInt64 {
        deviceSize.dividedRoundingUp(by: UInt64(blockSize))
    }
}

public struct GeometryError: Error, Hashable, Sendable, CustomStringConvertible {
    public var description: String
}

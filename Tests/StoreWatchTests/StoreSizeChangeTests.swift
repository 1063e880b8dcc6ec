import BlockIO
import Snapstack
import SnapstackErrors
import Testing

/// `extend --size`: what each form asks for, including sizes past any disk, which must end at
/// the largest useful store rather than trap.
@Suite struct StoreSizeChangeTests {
    let current = Bytes.mebibytes(8)
    let origin = Bytes.mebibytes(64)

    @Test func eachFormAsksForWhatItSays() throws {
        #expect(try StoreSizeChange.to(.mebibytes(12)).requestedSize(current: current, origin: origin) == .mebibytes(12))
        #expect(try StoreSizeChange.by(.mebibytes(2)).requestedSize(current: current, origin: origin) == .mebibytes(10))
        #expect(try StoreSizeChange.byPercent(50).requestedSize(current: current, origin: origin) == .mebibytes(12))
        #expect(try StoreSizeChange.toPercentOfOrigin(25).requestedSize(current: current, origin: origin) == .mebibytes(16))
    }

    @Test func sizesPastAnyDiskSaturate() throws {
        #expect(try StoreSizeChange.byPercent(1e300).requestedSize(current: current, origin: origin) == Bytes(.max))
        #expect(try StoreSizeChange.toPercentOfOrigin(1e300).requestedSize(current: current, origin: origin) == Bytes(.max))
        #expect(try StoreSizeChange.by(Bytes(.max)).requestedSize(current: current, origin: origin) == Bytes(.max))
        // Just under 2^64 as a Double is still a UInt64.
        #expect(try StoreSizeChange.toPercentOfOrigin(100).requestedSize(current: current, origin: Bytes(1 << 63))
            == Bytes(1 << 63))
    }

    @Test func nonsensePercentagesAreRefused() {
        for percent in [0, -5, .nan, .infinity] as [Double] {
            #expect(throws: SnapstackError.self) { try StoreSizeChange.byPercent(percent).requestedSize(current: current, origin: origin) }
            #expect(throws: SnapstackError.self) {
                try StoreSizeChange.toPercentOfOrigin(percent).requestedSize(current: current, origin: origin)
            }
        }
    }
}

import BlockIO
import Testing

@Suite("Bytes(parsing:)")
struct BytesParsingTests {
    @Test("sizes with and without a unit", arguments: [
        ("0", 0),
        ("512", 512),
        ("512b", 512),
        ("512B", 512),
        ("1s", 512),
        ("8S", 4096),
        ("64K", 65_536),
        ("64k", 65_536),
        ("64KiB", 65_536),
        ("4M", 4 << 20),
        ("4MiB", 4 << 20),
        ("4MB", 4 << 20),  // binary, as LVM reads it: 4 MiB, not 4 000 000
        ("10G", 10 << 30),
        ("10GiB", 10 << 30),
        ("1T", 1 << 40),
        ("1P", 1 << 50),
        ("16383P", 16_383 << 50),  // the largest whole number of PiB that fits in 64 bits
        ("18446744073709551615", UInt64.max),
    ] as [(String, UInt64)])
    func parses(text: String, expected: UInt64) throws {
        #expect(try Bytes(parsing: text) == Bytes(expected))
    }

    @Test("a bare number takes the default unit", arguments: [
        ("8", Character("s"), 4096),
        ("8", Character("S"), 4096),
        ("64", Character("k"), 65_536),
        ("3", Character("m"), 3 << 20),
        ("100", Character("b"), 100),
    ] as [(String, Character, UInt64)])
    func defaultUnit(text: String, unit: Character, expected: UInt64) throws {
        #expect(try Bytes(parsing: text, defaultUnit: unit) == Bytes(expected))
    }

    @Test("an explicit unit wins over the default unit")
    func explicitUnitWins() throws {
        #expect(try Bytes(parsing: "8b", defaultUnit: "s") == Bytes(8))
        #expect(try Bytes(parsing: "1K", defaultUnit: "s") == Bytes(1024))
    }

    @Test("the default unit is bytes")
    func defaultIsBytes() throws {
        #expect(try Bytes(parsing: "4096") == Bytes(4096))
    }

    @Test("refused input names the problem", arguments: [
        ("", "whole number"),
        ("K", "whole number"),
        ("-1", "whole number"),
        ("1.5G", "whole number"),
        ("+5", "whole number"),
        ("12Q", "unknown unit"),
        ("4 G", "unknown unit"),
        ("4Gi", "unknown unit"),
        ("99999999999999999999", "too large"),
        ("18446744073709551616", "too large"),
        ("18446744073709551615s", "too large"),
        ("20000000P", "too large"),
        ("16384P", "too large"),  // exactly 2^64 bytes
    ])
    func refuses(text: String, reasonContains expected: String) throws {
        let error = try #require(throws: SizeParseError.self) { try Bytes(parsing: text) }
        #expect(error.input == text)
        #expect(error.reason.contains(expected), "reason was \(error.reason)")
        // The message shown to a person quotes the input and says how to write a size.
        #expect(error.description.contains("\"\(text)\""))
        #expect(error.description.contains(error.reason))
        #expect(error.description.contains("64K"))
    }

    @Test("the unknown unit is quoted in the reason")
    func unknownUnitQuoted() throws {
        let error = try #require(throws: SizeParseError.self) { try Bytes(parsing: "12Q") }
        #expect(error.reason == "unknown unit \"Q\"")
    }

    @Test("a default unit that is not a unit is refused")
    func badDefaultUnit() {
        #expect(throws: SizeParseError.self) { try Bytes(parsing: "8", defaultUnit: "x") }
    }
}

@Suite("Bytes and Sectors conversions")
struct ConversionTests {
    @Test("exactSectors of whole sectors", arguments: [
        (0, 0), (512, 1), (4096, 8), (1 << 20, 2048), (UInt64.max - 511, UInt64.max / 512),
    ] as [(UInt64, UInt64)])
    func exactSectors(bytes: UInt64, sectors: UInt64) {
        #expect(Bytes(bytes).exactSectors == Sectors(sectors))
    }

    @Test("exactSectors is nil inside a sector", arguments: [1, 511, 513, 4095, UInt64.max] as [UInt64])
    func partialSector(bytes: UInt64) {
        #expect(Bytes(bytes).exactSectors == nil)
    }

    @Test("Sectors.bytes multiplies by 512", arguments: [
        (0, 0), (1, 512), (8, 4096), (2048, 1 << 20), (UInt64.max / 512, UInt64.max - 511),
    ] as [(UInt64, UInt64)])
    func sectorsToBytes(sectors: UInt64, bytes: UInt64) {
        #expect(Sectors(sectors).bytes == Bytes(bytes))
        #expect(Sectors(sectors).bytes.exactSectors == Sectors(sectors))
    }

    @Test("the sector size is the kernel's 512")
    func sectorSize() {
        #expect(Sectors.size == 512)
    }

    @Test("adding sums when the result fits")
    func addingFits() {
        #expect(Sectors(100).adding(Sectors(28)) == Sectors(128))
        #expect(Sectors.zero.adding(.zero) == .zero)
        #expect(Sectors(UInt64.max - 1).adding(Sectors(1)) == Sectors(UInt64.max))
        #expect(Sectors(UInt64.max).adding(.zero) == Sectors(UInt64.max))
    }

    @Test("adding returns nil on overflow", arguments: [
        (UInt64.max, 1), (1, UInt64.max), (UInt64.max, UInt64.max), (1 << 63, 1 << 63),
    ] as [(UInt64, UInt64)])
    func addingOverflows(a: UInt64, b: UInt64) {
        #expect(Sectors(a).adding(Sectors(b)) == nil)
    }

    @Test("binary unit constructors")
    func constructors() {
        #expect(Bytes.kibibytes(4) == Bytes(4096))
        #expect(Bytes.mebibytes(1) == Bytes(1_048_576))
        #expect(Bytes.gibibytes(2) == Bytes(2_147_483_648))
    }

    @Test("descriptions carry their unit")
    func descriptions() {
        #expect(Bytes(4096).description == "4096B")
        #expect(Sectors(8).description == "8s")
    }
}

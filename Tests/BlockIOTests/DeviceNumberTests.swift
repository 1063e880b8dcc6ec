import BlockIO
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("DeviceNumber")
struct DeviceNumberTests {
    @Test("parses major:minor", arguments: [
        ("7:0", 7, 0),
        ("253:12", 253, 12),
        ("259:65536", 259, 65_536),
        ("0:0", 0, 0),
        ("4294967295:4294967295", UInt32.max, UInt32.max),
    ] as [(String, UInt32, UInt32)])
    func parses(text: String, major: UInt32, minor: UInt32) throws {
        let number = try #require(DeviceNumber(parsing: text))
        #expect(number == DeviceNumber(major: major, minor: minor))
        #expect(number.major == major)
        #expect(number.minor == minor)
    }

    @Test("prints major:minor as the kernel does, and parses it back", arguments: [
        (7, 0, "7:0"), (253, 12, "253:12"), (259, 65_536, "259:65536"),
    ] as [(UInt32, UInt32, String)])
    func description(major: UInt32, minor: UInt32, text: String) {
        let number = DeviceNumber(major: major, minor: minor)
        #expect(number.description == text)
        #expect(DeviceNumber(parsing: number.description) == number)
    }

    @Test("parses a Substring too")
    func substring() {
        let line = "linear 8:16 0"
        let token = line.split(separator: " ")[1]
        #expect(DeviceNumber(parsing: token) == DeviceNumber(major: 8, minor: 16))
    }

    @Test("refuses anything but major:minor", arguments: [
        "7", "7:", ":0", ":", "", "a:b", "7:0:1", "-1:0", "7:-1", " 7:0", "7:0 ", "7 :0", "+7:0",
        "0x7:0", "4294967296:0", "0:4294967296", "\u{0667}:0",  // ARABIC-INDIC DIGIT SEVEN
    ])
    func refuses(text: String) {
        #expect(DeviceNumber(parsing: text) == nil)
    }

    @Test("rawValue round-trips through DeviceNumber(dev_t)", arguments: [
        (8, 1), (259, 70_000), (4095, 1_048_575), (0, 0), (253, 0), (UInt32.max, UInt32.max),
    ] as [(UInt32, UInt32)])
    func rawValueRoundTrip(major: UInt32, minor: UInt32) {
        let number = DeviceNumber(major: major, minor: minor)
        let back = DeviceNumber(number.rawValue)
        #expect(back == number)
        #expect(back.major == major)
        #expect(back.minor == minor)
    }

    @Test("rawValue uses glibc's dev_t encoding", arguments: [
        (8, 1, 0x801),
        (259, 70_000, 0x1111_0370),
        (4095, 1_048_575, 0xFFFF_FFFF),
        (4096, 0, 0x1000_0000_0000),
    ] as [(UInt32, UInt32, UInt64)])
    func rawValueEncoding(major: UInt32, minor: UInt32, raw: UInt64) {
        #expect(UInt64(DeviceNumber(major: major, minor: minor).rawValue) == raw)
        #expect(DeviceNumber(dev_t(raw)) == DeviceNumber(major: major, minor: minor))
    }

    @Test("distinct major/minor pairs give distinct rawValues")
    func distinct() {
        #expect(DeviceNumber(major: 1, minor: 0).rawValue != DeviceNumber(major: 0, minor: 256).rawValue)
        #expect(DeviceNumber(major: 0, minor: 1).rawValue != DeviceNumber(major: 1, minor: 0).rawValue)
    }
}

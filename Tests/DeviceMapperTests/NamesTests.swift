import DeviceMapper
import Testing

/// Strings that must never become a device-mapper name or UUID: each would split a table line
/// or a udev rule, escape `/dev/mapper`, or be mangled by libdm.
let forbiddenCharacters = [
    "snap stack", "snap\nstack", "snap\tstack", "snap/stack", "snap\"stack", "snap'stack",
    "snap\u{e9}", "snap\u{7f}", "\u{0}snap", "snap\\stack", "snap\rstack", "snap$stack", "snap;stack", "snap*",
]

@Suite("DMName")
struct DMNameTests {
    @Test("accepts libdm's safe characters", arguments: [
        "snapstack-data", "a", "x#+-.:=@_y", "ABC123", ".a", String(repeating: "n", count: 127),
    ])
    func accepts(name: String) throws {
        let dmName = try DMName(name)
        #expect(dmName.rawValue == name)
        #expect(dmName.description == name)
        #expect(dmName.devicePath == "/dev/mapper/" + name)
    }

    @Test("refuses empty, dot names and names over 127 bytes", arguments: [
        "", ".", "..", String(repeating: "n", count: 128),
    ])
    func refusesShape(name: String) throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DMName(name) }
        #expect(error.kind == .name)
        #expect(error.value == name)
    }

    @Test("the limit counts UTF-8 bytes, not characters")
    func limitInBytes() throws {
        // 64 two-byte characters are 128 bytes: too long, whatever else is wrong with them.
        let error = try #require(throws: InvalidIdentifier.self) { try DMName(String(repeating: "\u{e9}", count: 64)) }
        #expect(error.reason.contains("127"))
    }

    @Test("refuses characters outside libdm's whitelist", arguments: forbiddenCharacters)
    func refusesCharacters(name: String) throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DMName(name) }
        #expect(error.kind == .name)
        #expect(error.reason.contains("use only letters, digits"))
    }

    @Test("the error names what is wrong", arguments: [
        ("", "empty"),
        (String(repeating: "n", count: 128), "127 bytes"),
        ("..", "not device names"),
        ("my disk", "a space"),
        ("a/b", "\"/\""),
        ("a\nb", "a control character"),
        ("a\u{7f}", "a control character"),
        ("caf\u{e9}", "\"\u{e9}\""),
    ])
    func reasons(name: String, expected: String) throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DMName(name) }
        #expect(error.reason.contains(expected), "reason was \(error.reason)")
    }

    @Test("the message shows a newline as \\n and never contains one")
    func newlineEscaped() throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DMName("snap\nstack") }
        let message = error.description
        #expect(!message.contains("\n"))
        #expect(message.contains(#""snap\nstack""#))
        #expect(message.hasPrefix("invalid device-mapper name "))
    }

    @Test("the message escapes tabs, quotes, backslashes and other control characters")
    func otherEscapes() throws {
        let tab = try #require(throws: InvalidIdentifier.self) { try DMName("a\tb") }
        #expect(tab.description.contains(#""a\tb""#))
        let quote = try #require(throws: InvalidIdentifier.self) { try DMName("a\"b") }
        #expect(quote.description.contains(#""a\"b""#))
        let backslash = try #require(throws: InvalidIdentifier.self) { try DMName("a\\b") }
        #expect(backslash.description.contains(#""a\\b""#))
        let delete = try #require(throws: InvalidIdentifier.self) { try DMName("a\u{7f}") }
        #expect(delete.description.contains(#""a\x7f""#))
        #expect(!delete.description.unicodeScalars.contains("\u{7f}"))
        let escape = try #require(throws: InvalidIdentifier.self) { try DMName("a\u{1b}[31m") }
        #expect(!escape.description.unicodeScalars.contains("\u{1b}"))
        #expect(escape.description.contains(#"\x1b"#))
    }

    @Test("names order by their text")
    func ordering() throws {
        #expect(try DMName("a") < DMName("b"))
        #expect(try DMName("snap-1") != DMName("snap-2"))
    }
}

@Suite("DMUUID")
struct DMUUIDTests {
    @Test("accepts up to 128 bytes of safe characters", arguments: [
        "SNAPSTACK-0123456789abcdef", "a", "x#+-.:=@_y", String(repeating: "u", count: 128),
    ])
    func accepts(uuid: String) throws {
        let dmUUID = try DMUUID(uuid)
        #expect(dmUUID.rawValue == uuid)
        #expect(dmUUID.description == uuid)
    }

    @Test("refuses empty, dot names and UUIDs over 128 bytes", arguments: [
        "", ".", "..", String(repeating: "u", count: 129),
    ])
    func refusesShape(uuid: String) throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DMUUID(uuid) }
        #expect(error.kind == .uuid)
        #expect(error.value == uuid)
    }

    @Test("a 128-byte UUID is too long for a name")
    func nameAndUUIDLimitsDiffer() throws {
        let text = String(repeating: "u", count: 128)
        #expect(throws: Never.self) { try DMUUID(text) }
        #expect(throws: InvalidIdentifier.self) { try DMName(text) }
    }

    @Test("refuses characters outside libdm's whitelist", arguments: forbiddenCharacters)
    func refusesCharacters(uuid: String) throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DMUUID(uuid) }
        #expect(error.kind == .uuid)
    }

    @Test("the message says uuid and escapes a newline")
    func message() throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DMUUID("SNAP\n1") }
        #expect(error.description.hasPrefix("invalid device-mapper uuid "))
        #expect(error.description.contains(#""SNAP\n1""#))
        #expect(!error.description.contains("\n"))
    }

    @Test("hasPrefix looks at the UUID's text")
    func prefix() throws {
        let uuid = try DMUUID("SNAPSTACK-abc")
        #expect(uuid.hasPrefix("SNAPSTACK-"))
        #expect(!uuid.hasPrefix("LVM-"))
    }
}

@Suite("DeviceReference")
struct DeviceReferenceTests {
    @Test("checkedPath accepts absolute paths without whitespace", arguments: [
        "/dev/loop0", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1", "/dev/mapper/snapstack-data",
    ])
    func accepts(path: String) throws {
        let reference = try DeviceReference.checkedPath(path)
        #expect(reference == .path(path))
        #expect(reference.description == path)
    }

    @Test("checkedPath refuses paths that cannot stand as one table argument", arguments: [
        "dev/loop0", "", "loop0", "/dev/my disk", "/dev/a\nb", "/dev/a\tb", "/dev/a\rb", "/dev/a\u{7f}b",
        "/dev/a\u{0}b", "/dev/a\u{a0}b", "/dev/loop0 ", String(repeating: "/a", count: 2048),
    ])
    func refuses(path: String) throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DeviceReference.checkedPath(path) }
        #expect(error.kind == .devicePath)
        #expect(error.value == path)
        #expect(error.description.hasPrefix("invalid device-mapper device path "))
        #expect(!error.description.contains("\n"))
    }

    @Test("a relative path is refused as not absolute")
    func relativeReason() throws {
        let error = try #require(throws: InvalidIdentifier.self) { try DeviceReference.checkedPath("dev/loop0") }
        #expect(error.reason.contains("absolute"))
    }

    @Test("a number reference prints major:minor")
    func numberDescription() {
        #expect(DeviceReference.number(.init(major: 253, minor: 4)).description == "253:4")
    }
}

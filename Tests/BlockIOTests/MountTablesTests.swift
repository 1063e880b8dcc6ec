import BlockIO
import Testing

@Suite("DeviceUse.parseMountInfo")
struct MountInfoTests {
    // Lines in the shape of the Debian 6.1 kernel's /proc/self/mountinfo.
    static let sample = """
        22 27 0:21 / /proc rw,relatime - proc proc rw
        27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
        41 27 7:0 / /mnt/my\\040data rw,relatime shared:24 - ext4 /dev/loop0 rw
        42 27 7:1 /sub/dir /srv/tab\\011and\\012newline rw - xfs /dev/loop1 rw,attr2
        43 27 7:2 / /mnt/back\\134slash rw shared:5 master:2 propagate_from:1 unbindable - ext4 /dev/loop2 rw
        44 27 0:45 / /home rw,relatime shared:30 - btrfs /dev/vdb rw,space_cache=v2,subvolid=5
        45 27 0:46 / /mnt/share rw - nfs4 server:/export\\040dir rw,vers=4.2
        """

    @Test("reads every well-formed line")
    func count() {
        #expect(DeviceUse.parseMountInfo(Self.sample).count == 7)
    }

    @Test("fields of a plain line")
    func plain() throws {
        let root = try #require(DeviceUse.parseMountInfo(Self.sample).first { $0.mountPoint == "/" })
        #expect(root == MountInfoEntry(mountID: 27, parentID: 1, device: DeviceNumber(major: 254, minor: 1),
                                       root: "/", mountPoint: "/", filesystemType: "ext4", source: "/dev/vda1"))
    }

    @Test("decodes an escaped space in the mount point")
    func escapedSpace() throws {
        let entry = try #require(DeviceUse.parseMountInfo(Self.sample).first { $0.device == DeviceNumber(major: 7, minor: 0) })
        #expect(entry.mountPoint == "/mnt/my data")
        #expect(entry.source == "/dev/loop0")
    }

    @Test("decodes tab, newline and backslash, and keeps the mounted root")
    func otherEscapes() throws {
        let entries = DeviceUse.parseMountInfo(Self.sample)
        let one = try #require(entries.first { $0.device == DeviceNumber(major: 7, minor: 1) })
        #expect(one.mountPoint == "/srv/tab\tand\nnewline")
        #expect(one.root == "/sub/dir")
        #expect(one.filesystemType == "xfs")
        let two = try #require(entries.first { $0.device == DeviceNumber(major: 7, minor: 2) })
        #expect(two.mountPoint == "/mnt/back\\slash")
    }

    @Test("any number of optional fields before the separator")
    func optionalFields() throws {
        let entries = DeviceUse.parseMountInfo(Self.sample)
        #expect(entries.first { $0.mountID == 22 }?.filesystemType == "proc")  // none
        #expect(entries.first { $0.mountID == 43 }?.source == "/dev/loop2")   // four
        #expect(entries.first { $0.mountID == 45 }?.source == "server:/export dir")
    }

    @Test("skips lines without the kernel's shape", arguments: [
        "",
        "garbage",
        "22 27 0:21 / /proc rw,relatime proc proc rw",            // no separator
        "22 27 0:21 / /proc rw,relatime - proc proc",              // no super options
        "22 27 zero / /proc rw,relatime - proc proc rw",           // bad device number
        "x 27 0:21 / /proc rw,relatime - proc proc rw",            // bad mount id
        "22 27 0:21 / - rw,relatime shared:1 proc proc rw",        // "-" only as the mount point
    ])
    func malformed(line: String) {
        #expect(DeviceUse.parseMountInfo(line).isEmpty)
    }

    @Test("a malformed line does not hide the lines around it")
    func mixed() {
        let text = "garbage\n" + Self.sample + "\n\nmore garbage - x y z\n"
        #expect(DeviceUse.parseMountInfo(text).count == 7)
    }
}

@Suite("DeviceUse.decodeOctalEscapes")
struct OctalEscapeTests {
    @Test("decodes backslash and three octal digits", arguments: [
        ("/mnt/data", "/mnt/data"),
        ("/mnt/my\\040data", "/mnt/my data"),
        ("\\040lead", " lead"),
        ("trail\\040", "trail "),
        ("a\\011b\\012c\\134d", "a\tb\nc\\d"),
        ("\\303\\251t\\303\\251", "été"),  // UTF-8 bytes escaped one by one
        ("/already/ünïcode", "/already/ünïcode"),
    ])
    func decodes(field: String, expected: String) {
        #expect(DeviceUse.decodeOctalEscapes(field) == expected)
    }

    @Test("keeps what is not a complete escape", arguments: [
        "\\", "x\\", "x\\04", "x\\04x", "\\08x", "\\9ab", "\\400", "\\\\",
    ])
    func keeps(field: String) {
        #expect(DeviceUse.decodeOctalEscapes(field) == field)
    }

    @Test("works on a Substring")
    func substring() {
        let line = "41 27 7:0 / /mnt/my\\040data rw"
        #expect(DeviceUse.decodeOctalEscapes(line.split(separator: " ")[4]) == "/mnt/my data")
    }
}

@Suite("DeviceUse.parseSwaps")
struct SwapsTests {
    @Test("reads the path and type of each swap area, skipping the heading")
    func parses() {
        let text = """
            Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
            /dev/vda2                               partition\t2097148\t\t0\t\t-2
            /var/swap\\040file                       file\t\t1048572\t\t0\t\t-3
            /dev/loop3                              partition\t65532\t\t0\t\t-4
            """
        #expect(DeviceUse.parseSwaps(text) == [
            SwapEntry(path: "/dev/vda2", type: "partition"),
            SwapEntry(path: "/var/swap file", type: "file"),
            SwapEntry(path: "/dev/loop3", type: "partition"),
        ])
    }

    @Test("no swap: only the heading")
    func empty() {
        #expect(DeviceUse.parseSwaps("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n").isEmpty)
        #expect(DeviceUse.parseSwaps("").isEmpty)
    }
}

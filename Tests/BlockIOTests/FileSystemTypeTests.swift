import BlockIO
import Foundation
import SystemPackage
import Testing

@Suite("FileSystemType")
struct FileSystemTypeTests {
    /// `stat -f -c %t PATH`: coreutils' own statfs, in hex.
    static func statMagic(_ path: String) throws -> Int {
        let text = try runTool("/usr/bin/stat", ["-f", "-c", "%t", path]).stdout
        return try #require(Int(text.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16))
    }

    @Test("agrees with stat -f on the mount points every Linux machine has", arguments: ["/", "/proc", "/dev", "/tmp"])
    func agreesWithStat(path: String) throws {
        #expect(try FileSystemType(of: FilePath(path)).rawValue == Self.statMagic(path))
    }

    @Test("direct I/O through a loop device only on block file systems that do it themselves")
    func directIO() {
        #expect(FileSystemType.ext4.loopDirectIOIsSafe && FileSystemType.xfs.loopDirectIOIsSafe)
        #expect(!FileSystemType.tmpfs.loopDirectIOIsSafe)
        #expect(!FileSystemType.overlay.loopDirectIOIsSafe)
        #expect(!FileSystemType(rawValue: 0x6969).loopDirectIOIsSafe)   // NFS
    }

    @Test("a missing path is an error, not a guess")
    func missing() {
        #expect(throws: Errno.noSuchFileOrDirectory) { try FileSystemType(of: "/nonexistent/snapstack-fs-type") }
    }
}

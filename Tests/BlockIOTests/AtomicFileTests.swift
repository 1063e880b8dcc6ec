import BlockIO
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("AtomicFile")
struct AtomicFileTests {
    @Test func replacesTheFileWholeWithItsModeWhateverTheUmask() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("metrics.prom")
            try Data("old\n".utf8).write(to: URL(fileURLWithPath: path.string))
            let previous = umask(0o077)
            defer { umask(previous) }
            try AtomicFile.replace(path, with: Array("new\n".utf8))
            #expect(try String(contentsOfFile: path.string, encoding: .utf8) == "new\n")
            #expect(try fileStatus(path).st_mode & 0o777 == 0o644)
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory.string) == ["metrics.prom"])
        }
    }

    @Test func aLinkPlantedAtTheTemporaryNameIsRemovedNotFollowed() throws {
        try withTemporaryDirectory { directory in
            let victim = directory.appending("victim")
            try Data("keep\n".utf8).write(to: URL(fileURLWithPath: victim.string))
            let temporary = directory.appending(".image.manifest.\(getpid()).tmp")
            #expect(symlink(victim.string, temporary.string) == 0)
            try AtomicFile.replace(directory.appending("image.manifest"), with: Array("{}\n".utf8))
            #expect(try String(contentsOfFile: victim.string, encoding: .utf8) == "keep\n")
            #expect(try String(contentsOfFile: directory.appending("image.manifest").string, encoding: .utf8) == "{}\n")
            #expect(!FileManager.default.fileExists(atPath: temporary.string))
        }
    }

    @Test func aMissingDirectoryIsAnErrorThatLeavesNothing() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appending("absent/file")
            let error = try #require(throws: BlockIOError.self) { try AtomicFile.replace(path, with: [1, 2, 3]) }
            #expect(error.errno == .noSuchFileOrDirectory)
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory.string).isEmpty)
        }
    }
}

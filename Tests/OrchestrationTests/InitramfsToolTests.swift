@testable import Snapstack
import SnapstackErrors
import Testing

/// Which tool remakes the initramfs of a protected /: update-initramfs with snapstack's hook,
/// else dracut with snapstack's module; a refusal that names what is missing otherwise.
@Suite struct InitramfsToolTests {
    static let updateInitramfs = "/usr/sbin/update-initramfs"
    static let hook = "/usr/share/initramfs-tools/hooks/snapstack"
    static let module = "/usr/lib/dracut/modules.d/90snapstack/module-setup.sh"

    static func tool(_ files: Set<String>) throws -> InitramfsTool {
        try InitramfsTool.installed { files.contains($0) }
    }

    static func refusal(_ files: Set<String>) throws -> SnapstackError {
        let error = try #require(throws: SnapstackError.self) { try tool(files) }
        #expect(error.kind == .refused)
        return error
    }

    @Test("initramfs-tools with snapstack's hook: update-initramfs -u -k all, even beside dracut")
    func initramfsTools() throws {
        #expect(try Self.tool([Self.updateInitramfs, Self.hook]).commandLine == "update-initramfs -u -k all")
        #expect(try Self.tool([Self.updateInitramfs, Self.hook, "/usr/bin/dracut", Self.module]) == .initramfsTools)
    }

    @Test("dracut with snapstack's module: dracut -f --regenerate-all, from where it is installed")
    func dracut() throws {
        let debian = try Self.tool(["/usr/bin/dracut", Self.module])
        #expect(debian == .dracut)
        #expect(debian.commandLine == "dracut -f --regenerate-all")
        #expect(try Self.tool(["/usr/sbin/dracut", Self.module]).executable == "/usr/sbin/dracut")
        // update-initramfs without snapstack's hook is not the machine's tool when dracut has the module.
        #expect(try Self.tool([Self.updateInitramfs, "/usr/bin/dracut", Self.module]) == .dracut)
    }

    @Test("a tool without snapstack's integration, or no tool, is refused, saying what is missing and what to do")
    func refusals() throws {
        let noHook = try Self.refusal([Self.updateInitramfs])
        #expect(noHook.why?.contains(Self.hook) == true, "why: \(noHook.why ?? "none")")
        #expect(noHook.remedy?.contains("install.sh") == true)
        let noModule = try Self.refusal(["/usr/bin/dracut"])
        #expect(noModule.why?.contains(Self.module) == true, "why: \(noModule.why ?? "none")")
        #expect(noModule.remedy?.contains("install.sh") == true)
        let nothing = try Self.refusal([Self.hook, Self.module])
        #expect(nothing.why?.contains("update-initramfs") == true && nothing.why?.contains("dracut") == true, "why: \(nothing.why ?? "none")")
        #expect(nothing.remedy?.contains("initramfs-tools or dracut") == true)
    }
}

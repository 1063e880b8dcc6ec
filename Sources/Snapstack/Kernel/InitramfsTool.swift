import SnapstackErrors

/// The tool that makes this machine's initramfs, with snapstack's integration for it: the
/// initramfs of a protected `/` must stack it before mounting it, which only snapstack's hook
/// (initramfs-tools) or module (dracut) does. Debian's packages of the two conflict; a machine
/// that has both uses initramfs-tools, as `update-initramfs` is what its kernel packages run.
public struct InitramfsTool: Equatable, Sendable {
    /// As a person types it: `update-initramfs`, `dracut`.
    public var name: String
    public var executable: String
    /// What remakes the initramfs of every installed kernel.
    public var arguments: [String]
    /// snapstack's hook or module for it, which systemd/install.sh installs.
    public var integration: String

    /// The whole command, for messages: `update-initramfs -u -k all`.
    public var commandLine: String { ([name] + arguments).joined(separator: " ") }

    public static let initramfsTools = InitramfsTool(
        name: "update-initramfs", executable: "/usr/sbin/update-initramfs", arguments: ["-u", "-k", "all"],
        integration: "/usr/share/initramfs-tools/hooks/snapstack")
    /// dracut 059 (Debian 12): `--regenerate-all` runs it for each kernel under /lib/modules,
    /// each image where the kernel's own packages put it (/boot/initrd.img-VERSION on Debian).
    public static let dracut = InitramfsTool(
        name: "dracut", executable: "/usr/bin/dracut", arguments: ["-f", "--regenerate-all"],
        integration: "/usr/lib/dracut/modules.d/90snapstack/module-setup.sh")
    /// Where dracut may be: Debian ships /usr/bin/dracut, other distributions /usr/sbin/dracut.
    static let dracutExecutables = ["/usr/bin/dracut", "/usr/sbin/dracut"]

    /// The tool this machine makes its initramfs with, found by `isExecutable` (a file test):
    /// update-initramfs with snapstack's hook, else dracut with snapstack's module. Refuses,
    /// saying what is missing, when neither is there.
    public static func installed(isExecutable: (String) -> Bool) throws -> InitramfsTool {
        let updateInitramfs = isExecutable(initramfsTools.executable)
        let hook = updateInitramfs && isExecutable(initramfsTools.integration)
        if hook { return initramfsTools }
        let dracutPath = dracutExecutables.first(where: isExecutable)
        if let dracutPath, isExecutable(dracut.integration) {
            var tool = dracut
            tool.executable = dracutPath
            return tool
        }
        let what = "cannot make an initramfs that stacks /"
        let remedy = "install snapstack's system integration (systemd/install.sh)"
        switch (updateInitramfs, dracutPath) {
        case (true, _):
            throw SnapstackError(.refused, what, why: "snapstack's initramfs-tools hook \(initramfsTools.integration) is not installed",
                                 remedy: remedy)
        case (false, _?):
            throw SnapstackError(.refused, what, why: "snapstack's dracut module \(dracut.integration) is not installed",
                                 remedy: remedy)
        case (false, nil):
            throw SnapstackError(.refused, "cannot make the initramfs",
                                 why: "neither update-initramfs (initramfs-tools) nor dracut is installed: snapstack stacks / from an initramfs either of them makes",
                                 remedy: "install initramfs-tools or dracut, then snapstack's system integration (systemd/install.sh)")
        }
    }
}

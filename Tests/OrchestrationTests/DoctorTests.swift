import Snapstack
import Testing

/// `doctor`'s warning about kernels whose dm-era forgets the era under way at a crash.
@Suite struct DoctorTests {
    @Test("releases before 5.12 are warned about, naming the fix; 5.12 and later, and what is not MAJOR.MINOR, are not", arguments: [
        ("5.10.0-28-amd64", true), ("4.19.0-26-amd64", true), ("5.11.22", true), ("3.10.0-1160.el7.x86_64", true),
        ("5.12.0", false), ("6.1.0-28-amd64", false), ("5.14.0-427.el9.x86_64", false), ("10.0", false),
        ("", false), ("linux", false), ("5", false), ("-5.10", false), ("99999999999999999999999.1", false), ("5.x", false),
    ])
    func kernelRelease(release: String, warned: Bool) {
        let warnings = Doctor.kernelWarnings(release: release)
        #expect(warnings.isEmpty == !warned, "\(release): \(warnings)")
        if let warning = warnings.first {
            #expect(warning.what.contains(release) && warning.what.contains("de89afc1e40f"))
            #expect(warning.remedy.contains("--allow-full"))
        }
    }
}

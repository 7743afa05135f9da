// `vsa dashboard`: where a mounted array's service processor serves its dashboard (ServiceProcessor/Dashboard.swift).
import ArgumentParser
import ArrayModel
import Foundation

struct DashboardCommand: VSACommand {
    static let configuration = CommandConfiguration(
        commandName: "dashboard",
        abstract: "Print (or open) the URL of a mounted array's live dashboard, token included (mount with -o dashboard).")
    @Argument(help: "The mount point (or array folder) of a mounted array.") var target: String
    @Flag(help: "Open it in the desktop's browser (xdg-open) as well.") var open = false

    func execute() throws(VSAError) {
        let dir = try mountedArray(target, "see its dashboard")
        let report = try statusReport(dir)
        guard let url = report.daemon?.dashboardURL else {
            throw VSAError("\(target) was mounted without a dashboard; unmount it and mount it with -o dashboard (or -o dashboard=HOST:PORT)")
        }
        print(url)
        if let metrics = report.daemon?.metricsURL { print("metrics: \(metrics)") }
        guard open else { return }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["xdg-open", url]
        do { try process.run() } catch { throw VSAError("cannot run xdg-open: \(error); open the URL above by hand") }
        process.waitUntilExit()
        if process.terminationStatus != 0 { throw VSAError("xdg-open failed (status \(process.terminationStatus)); open the URL above by hand") }
    }
}

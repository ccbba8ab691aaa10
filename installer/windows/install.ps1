<#
.SYNOPSIS
  Installs (or removes) nscmonitor on a Windows instrument PC: the program, the
  configuration, a Task Scheduler task that runs the daemon at boot and restarts it, and a
  Start-menu shortcut for the dashboard. Run it again to upgrade: every step is idempotent.

.EXAMPLE
  # from a wheel, with a Python 3.10+ already installed (py launcher)
  .\install.ps1 -Wheel .\nscmonitor-0.1.0-py3-none-any.whl -WatchFolder '\\imager01\export\plates' `
      -ServiceAccount 'LAB\svc-nscmonitor'

.EXAMPLE
  # offline PC, from the self-contained folder built by installer/build_frozen.sh (on Windows)
  .\install.ps1 -FrozenDir .\dist\nscmonitor -WatchFolder '\\imager01\export\plates'

.EXAMPLE
  .\install.ps1 -Uninstall          # keeps the configuration, the database and the logs
#>
[CmdletBinding(DefaultParameterSetName = 'Wheel')]
param(
    [Parameter(ParameterSetName = 'Wheel')] [string]$Wheel,
    [Parameter(ParameterSetName = 'Wheel')] [string]$WheelDir,
    [Parameter(ParameterSetName = 'Wheel')] [string]$Python = 'py',
    [Parameter(ParameterSetName = 'Wheel')] [string]$Extras = 'cpu,gui',
    [Parameter(ParameterSetName = 'Frozen')] [string]$FrozenDir,
    [string]$InstallDir = (Join-Path $env:ProgramFiles 'nscmonitor'),
    [string]$ServiceAccount = 'NT AUTHORITY\NETWORK SERVICE',
    [string[]]$WatchFolder = @(),
    [switch]$NoStart,
    [Parameter(ParameterSetName = 'Uninstall')] [switch]$Uninstall
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$TaskName = 'nscmonitor'
# Same folder as 'nscmonitor service install' uses (PROGRAMDATA\nscmonitor): not a user
# profile, because the service account's profile is not where an engineer looks.
$DataDir = Join-Path $env:ProgramData 'nscmonitor'
$Config = Join-Path $DataDir 'config.toml'
$Shortcut = Join-Path $env:ProgramData 'Microsoft\Windows\Start Menu\Programs\nscmonitor dashboard.lnk'
$BuiltIn = @('SYSTEM', 'NT AUTHORITY\SYSTEM', 'LOCAL SERVICE', 'NT AUTHORITY\LOCAL SERVICE',
             'NETWORK SERVICE', 'NT AUTHORITY\NETWORK SERVICE')

function Assert-Admin {
    $id = [Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()
    if (-not $id.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw 'Run this script from an elevated PowerShell (Run as administrator).'
    }
}

function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "'$Exe $($Arguments -join ' ')' failed with exit code $LASTEXITCODE" }
}

function Stop-Task {
    $task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if ($task) {
        Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
        Write-Host "stopped task $TaskName"
    }
}

Assert-Admin

if ($Uninstall) {
    Stop-Task
    if (Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue) {
        Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
        Write-Host "removed task $TaskName"
    }
    if (Test-Path $Shortcut) { Remove-Item $Shortcut -Force; Write-Host "removed $Shortcut" }
    if (Test-Path $InstallDir) { Remove-Item $InstallDir -Recurse -Force; Write-Host "removed $InstallDir" }
    Write-Host "kept $DataDir (configuration, database, logs); delete it by hand to remove everything"
    exit 0
}

# 1. The program: a venv with the wheel, or a copy of the frozen folder.
Stop-Task
New-Item -ItemType Directory -Force -Path $InstallDir, $DataDir, (Join-Path $DataDir 'logs') | Out-Null
if ($FrozenDir) {
    $app = Join-Path $InstallDir 'app'
    robocopy $FrozenDir $app /MIR /NFL /NDL /NJH /NJS /NP | Out-Null
    if ($LASTEXITCODE -ge 8) { throw "copying $FrozenDir to $app failed (robocopy exit $LASTEXITCODE)" }
    $Exe = Join-Path $app 'nscmonitor.exe'
} else {
    if (-not $Wheel) { throw 'Give -Wheel PATH.whl (or -FrozenDir for the self-contained folder).' }
    $venv = Join-Path $InstallDir 'venv'
    if (-not (Test-Path (Join-Path $venv 'Scripts\python.exe'))) {
        Invoke-Checked $Python @('-m', 'venv', $venv)
    }
    $vpy = Join-Path $venv 'Scripts\python.exe'
    $pipArgs = @('-m', 'pip', 'install', '--upgrade', "$((Resolve-Path $Wheel).Path)[$Extras]")
    if ($WheelDir) { $pipArgs += @('--no-index', '--find-links', (Resolve-Path $WheelDir).Path) }
    Invoke-Checked $vpy $pipArgs
    $Exe = Join-Path $venv 'Scripts\nscmonitor.exe'
}
Invoke-Checked $Exe @('--version')

# 2. The configuration: written once, never overwritten (the engineer edits it).
if (-not (Test-Path $Config)) {
    $db = ($DataDir -replace '\\', '/')
    $lines = @(
        '# nscmonitor configuration, see docs/install.md',
        "database_url = `"sqlite:///$db/nscmonitor.db`"",
        "models_dir = `"$db/models`"",
        "log_dir = `"$db/logs`"",
        ''
    )
    foreach ($w in $WatchFolder) {
        if ($w -match '^[A-Za-z]:' -and $w -notmatch '^[Cc]:') {
            Write-Warning "$w uses a drive letter: the task does not see mapped drives; use \\server\share\..."
        }
        $name = Split-Path $w -Leaf
        $lines += @('[[watch]]', "path = '$w'", "experiment = '$name'", 'profile = "auto"', '')
    }
    Set-Content -Path $Config -Value $lines -Encoding UTF8
    Write-Host "wrote $Config"
} else {
    Write-Host "kept $Config"
}

# 3. Permissions: only the service account (and administrators) write the data folder: the
#    database, the models it serves and the configuration whose retrain.hook it executes.
#    Ordinary users (BUILTIN\Users, S-1-5-32-545) get read and execute: the dashboard opens the
#    database read-only. The ACL is replaced, not added to: ProgramData's inherited entries
#    let every user create files in a subfolder and own them, and an earlier version of this
#    script granted Users Modify on every file; both are removed here. The new entries are set
#    on the folder only and reach its files by inheritance (SYSTEM and Administrators full).
function Set-Acl-Checked([string[]]$Arguments) {
    icacls $DataDir @Arguments /Q | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls $DataDir $($Arguments -join ' ') failed (exit $LASTEXITCODE)" }
}
Set-Acl-Checked @('/remove:g', '*S-1-5-32-545', '/T')
Set-Acl-Checked @('/grant:r', '*S-1-5-18:(OI)(CI)F', '*S-1-5-32-544:(OI)(CI)F', "$($ServiceAccount):(OI)(CI)M",
                  '*S-1-5-32-545:(OI)(CI)RX')
Set-Acl-Checked @('/inheritance:r')

# 4. Database schema: 'db upgrade' backs the database up before migrating.
Invoke-Checked $Exe @('--config', $Config, 'db', 'upgrade')

# 5. The task, rendered by nscmonitor itself from installer/windows/nscmonitor-task.xml.
$xml = (& $Exe --config $Config service install --dry-run --run-as $ServiceAccount) -join "`r`n"
if ($LASTEXITCODE -ne 0) { throw "rendering the task failed (exit $LASTEXITCODE)" }
if ($BuiltIn -contains $ServiceAccount.ToUpper()) {
    Register-ScheduledTask -TaskName $TaskName -Xml $xml -User $ServiceAccount -Force | Out-Null
} else {
    $cred = Get-Credential -UserName $ServiceAccount -Message 'Password of the account the daemon runs as'
    Register-ScheduledTask -TaskName $TaskName -Xml $xml -User $ServiceAccount `
        -Password $cred.GetNetworkCredential().Password -Force | Out-Null
}
Write-Host "registered task $TaskName (runs as $ServiceAccount at boot, whether or not anyone is logged on)"

# 6. Start-menu shortcut for the dashboard (all users).
$shell = New-Object -ComObject WScript.Shell
$lnk = $shell.CreateShortcut($Shortcut)
$lnk.TargetPath = $Exe
$lnk.Arguments = "--config `"$Config`" gui"
$lnk.WorkingDirectory = $DataDir
$lnk.Description = 'nscmonitor dashboard: NSC differentiation, live from the microscope'
$lnk.Save()
Write-Host "created $Shortcut"

# 7. Start and check.
if (-not $NoStart) {
    Start-ScheduledTask -TaskName $TaskName
    Write-Host "started task $TaskName"
}
& $Exe --config $Config doctor
Write-Host "status: & '$Exe' --config '$Config' status   (exit code 0 = healthy)"

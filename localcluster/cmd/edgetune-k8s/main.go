// Command edgetune-k8s is a multi-call binary holding a whole Kubernetes control plane,
// built from the upstream command packages of one pinned k8s.io/kubernetes release:
//
//	edgetune-k8s kube-apiserver ...
//	edgetune-k8s kube-controller-manager ...
//	edgetune-k8s kube-scheduler ...
//	edgetune-k8s kubectl ...
//	edgetune-k8s etcd ...
//	edgetune-k8s kubelet ...
//	edgetune-k8s kube-proxy ...
//	edgetune-k8s version
//
// It also dispatches on the name it was called by (argv[0]), so a symlink named
// "kubectl" behaves like kubectl. One binary links the shared code (client-go, apimachinery,
// apiserver, the API types) once: it is several times smaller than seven binaries and the
// link step — the slowest part of an incremental build — runs once.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	_ "time/tzdata" // CronJob time zones

	"go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// stamp is set with -ldflags "-X main.stamp=..." by the build; the launcher compares it
// with the stamp it expects to decide whether to rebuild.
var stamp = "dev"

var tools = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "kubelet", "kube-proxy", "version"}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: edgetune-k8s {%s} [args...]\n", strings.Join(tools, "|"))
	os.Exit(2)
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if !isTool(name) {
		if len(os.Args) < 2 {
			usage()
		}
		name = os.Args[1]
		args = os.Args[2:]
	}
	// Upstream commands read os.Args (cobra, etcd's flag set): present them as if the tool
	// had been called directly.
	os.Args = append([]string{name}, args...)
	switch name {
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubectl":
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "etcd":
		etcdmain.Main(os.Args)
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kube-proxy":
		os.Exit(cli.Run(proxy.NewProxyCommand()))
	case "version":
		v := version.Get()
		fmt.Printf("kubernetes %s (git %s) stamp %s\n", v.GitVersion, v.GitCommit, stamp)
	default:
		usage()
	}
}

func isTool(n string) bool {
	for _, t := range tools {
		if n == t {
			return true
		}
	}
	return false
}

// A real go-rancher-metadata client, unchanged, pointed at metadns's metadata service.
// It prints one JSON line per fact so the Python test can check them.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/rancher/go-rancher-metadata/metadata"
)

func emit(kind string, value interface{}) {
	line, _ := json.Marshal(map[string]interface{}{"kind": kind, "value": value})
	fmt.Println(string(line))
}

func main() {
	client, err := metadata.NewClientAndWait(os.Args[1])
	if err != nil {
		emit("error", err.Error())
		os.Exit(1)
	}
	self, err := client.GetSelfContainer()
	if err != nil {
		emit("error", err.Error())
		os.Exit(1)
	}
	emit("self", map[string]interface{}{"name": self.Name, "ip": self.PrimaryIp, "stack": self.StackName,
		"service": self.ServiceName, "host": self.HostUUID})
	service, err := client.GetSelfService()
	if err != nil {
		emit("error", err.Error())
		os.Exit(1)
	}
	emit("self_service", map[string]interface{}{"name": service.Name, "token": service.Token,
		"containers": len(service.Containers)})
	services, err := client.GetServices()
	if err != nil {
		emit("error", err.Error())
		os.Exit(1)
	}
	names := []string{}
	for _, s := range services {
		names = append(names, s.StackName+"/"+s.Name+"="+s.Token)
	}
	emit("services", names)
	containers, err := client.GetServiceContainers("web", "shop")
	if err != nil {
		emit("error", err.Error())
		os.Exit(1)
	}
	emit("web_containers", len(containers))
	go client.OnChange(2, func(version string) { emit("version", version) })
	time.Sleep(60 * time.Second)
}

package main

// kubelambda-agent copy-opt DEST: copies the agent's own folder (/opt/kubelambda: the agent and the
// runtime client) to DEST. A pod whose /opt is an emptyDir holding the Function's layers runs it in an init
// container of the runtime image, so that /opt/kubelambda is still there beside the layers (docs/extensions.md).
// On the local node ($KUBELAMBDA_ROOTFS set) the runtime client lives outside the pod's root: nothing to copy.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

const optSelf = "/opt/kubelambda"

func copyOpt(args []string, getenv func(string) string) error {
	if len(args) != 1 || args[0] == "" {
		return errors.New("usage: kubelambda-agent copy-opt DEST")
	}
	if getenv("KUBELAMBDA_ROOTFS") != "" {
		fmt.Println("copy-opt: local node, the runtime client is not under the pod's root; nothing to copy")
		return nil
	}
	n, err := copyTree(optSelf, args[0])
	if err != nil {
		return err
	}
	fmt.Printf("copy-opt: copied %d files of %s to %s\n", n, optSelf, args[0])
	return nil
}

// copyTree copies the files, folders and symbolic links under src to dst (created), keeping permissions.
func copyTree(src, dst string) (int, error) {
	files := 0
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm()|0o700)
		case info.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			files++
			return os.Symlink(link, target)
		case info.Mode().IsRegular():
			files++
			return copyFile(path, target, info.Mode().Perm())
		}
		return nil
	})
	return files, err
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
